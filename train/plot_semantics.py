"""Two sweeps side by side per router, e.g. (a) the seed preset vs (b) our semantics, with error bars.

    python train/plot_semantics.py --summary results/train/seed_vs_ours_summary.csv \
        --a semantics=seed --b semantics=ours,max_steps=1200 --out results/train/seed_vs_ours.png

Selections are ``key=value`` filters on the summary's columns (``train/summarize.py``), comma
separated. One panel per capacity factor; per router, the mean over seeds of (a) and of (b) with an
error bar (``--err std``: one standard deviation over seeds; ``ci95``: the 95% Student-t interval of
the mean) and every seed as a dot. Under a router, ``≈`` marks a pair Welch's t-test (``--level``) does
not tell apart. Expert-choice is hollow and labelled "not causal" (it ranks the whole batch).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

from train.figures import cell_float, save_figure  # noqa: E402
from train.summarize import ci95_halfwidth, welch  # noqa: E402


def parse_selection(text: str) -> dict[str, str]:
    """'semantics=seed,max_steps=1200' -> {'semantics': 'seed', 'max_steps': '1200'}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a selection is key=value[,key=value...], got {text!r}")
        out[key.strip()] = value.strip()
    return out


def _matches(row: dict, selection: dict[str, str]) -> bool:
    return all(str(row.get(k, "")).strip() == v for k, v in selection.items())


def collect(rows: list[dict], selection: dict[str, str], metric: str) -> dict[tuple[str, str], dict]:
    """Per (capacity factor, router): the per-seed values of `metric` from the run rows that match."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r.get("row_type", "run") != "run" or not _matches(r, selection):
            continue
        v = cell_float(r.get(metric))
        if v is None:
            continue
        cell = out.setdefault((r.get("capacity_factor", ""), r.get("router", "?")),
                              {"values": [], "causal_safe": True})
        cell["values"].append(v)
        cell["causal_safe"] &= str(r.get("causal_safe", "True")).lower() != "false"
    return out


def plot(summary: str, a: dict, b: dict, out: str, metric: str = "final_val_ppl", err: str = "std",
         label_a: str | None = None, label_b: str | None = None, level: float = 0.05) -> list[dict]:
    """Write the figure; return one row per (cf, router) with both means, errors and the test."""
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    cells_a, cells_b = collect(rows, a, metric), collect(rows, b, metric)
    keys = sorted(set(cells_a) | set(cells_b))
    if not keys:
        raise ValueError(f"no run rows with {metric} match {a} or {b}")
    label_a = label_a or ",".join(f"{k}={v}" for k, v in a.items()) or "a"
    label_b = label_b or ",".join(f"{k}={v}" for k, v in b.items()) or "b"
    cfs = sorted({cf for cf, _ in keys}, key=lambda c: (cell_float(c) is None, cell_float(c) or 0.0))

    def error(values):  # one seed has no spread: no bar
        if len(values) < 2:
            return None
        return ci95_halfwidth(values) if err == "ci95" else statistics.stdev(values)

    fig, axes = plt.subplots(1, len(cfs), figsize=(max(7.0, 1.3 * len({r for _, r in keys}) * len(cfs)), 4.8),
                             squeeze=False, sharey=True)
    table = []
    for ax, cf in zip(axes[0], cfs):
        routers = sorted({r for c, r in keys if c == cf},
                         key=lambda r: statistics.fmean((cells_b.get((cf, r)) or cells_a[(cf, r)])["values"]))
        labelled = set()
        for x, router in enumerate(routers):
            ca, cb = cells_a.get((cf, router)), cells_b.get((cf, router))
            row = {"capacity_factor": cf, "router": router}
            for cell, dx, colour, lab, tag in ((ca, -0.15, "tab:orange", label_a, "a"), (cb, 0.15, "tab:blue", label_b, "b")):
                if not cell:
                    continue
                vals = cell["values"]
                mean, e = statistics.fmean(vals), error(vals)
                ax.errorbar(x + dx, mean, yerr=e, fmt="none", ecolor=colour, capsize=4, lw=1.5)
                ax.scatter([x + dx], [mean], s=55, marker="s", zorder=3, edgecolors=colour,
                           facecolors=colour if cell["causal_safe"] else "none",
                           label=None if tag in labelled else lab)
                labelled.add(tag)
                ax.scatter([x + dx + 0.06] * len(vals), vals, s=10, color=colour, alpha=0.6, zorder=2)
                row.update({f"mean_{tag}": mean, f"err_{tag}": e, f"n_{tag}": len(vals)})
            if ca and cb:
                _, _, p = welch(ca["values"], cb["values"])
                row["welch_p"] = p
                if p is not None and p >= level:
                    ax.annotate("≈", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                                textcoords="offset points", ha="center", fontsize=12)
            table.append(row)
        causal = {r: all(c["causal_safe"] for c in (cells_a.get((cf, r)), cells_b.get((cf, r))) if c) for r in routers}
        ax.set_xticks(range(len(routers)))
        ax.set_xticklabels([r if causal[r] else f"{r}\n(not causal)" for r in routers], rotation=30, ha="right",
                           fontsize=8)
        ax.set_title(f"capacity factor {cf}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"{metric.replace('_', ' ')} (lower is better)")
    axes[0, 0].legend(fontsize=8, loc="best")
    bars = "95% t-interval of the mean" if err == "ci95" else "± 1 std over seeds"
    fig.suptitle(f"{label_a} vs {label_b}\nsquares: mean, bars: {bars}; dots: seeds; ≈: Welch p ≥ {level}",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=130)
    return table


def _spread(row: dict, tag: str) -> str:
    mean, err, n = row[f"mean_{tag}"], row[f"err_{tag}"], row[f"n_{tag}"]
    return f"{mean:.4f}±{err:.4f}" if err is not None else f"{mean:.4f} ({n} seed)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="(a) vs (b) per router with error bars, from a summary CSV")
    p.add_argument("--summary", required=True, help="CSV from train/summarize.py (its run rows are used)")
    p.add_argument("--a", default="semantics=seed", help="selection of sweep (a): key=value[,key=value]")
    p.add_argument("--b", default="semantics=ours", help="selection of sweep (b)")
    p.add_argument("--label-a", default=None)
    p.add_argument("--label-b", default=None)
    p.add_argument("--metric", default="final_val_ppl", help="a per-run column, lower is better")
    p.add_argument("--err", choices=("std", "ci95"), default="std")
    p.add_argument("--level", type=float, default=0.05, help="Welch test level for the ≈ marks")
    p.add_argument("--out", default="runs/seed_vs_ours.png")
    args = p.parse_args(argv)
    try:
        table = plot(args.summary, parse_selection(args.a), parse_selection(args.b), args.out, args.metric, args.err,
                     args.label_a, args.label_b, args.level)
    except (OSError, ValueError) as e:
        print(f"plot_semantics.py: error: {e}", file=sys.stderr)
        return 2
    both = [r for r in table if "mean_a" in r and "mean_b" in r]
    print(f"wrote {args.out}: {len(table)} routers x cf, {len(both)} with both sweeps")
    for r in both:
        p_txt = "-" if r.get("welch_p") is None else f"{r['welch_p']:.3g}"
        print(f"  cf {r['capacity_factor']:>5} {r['router']:<14} a {_spread(r, 'a')}  b {_spread(r, 'b')}  "
              f"Welch p {p_txt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
