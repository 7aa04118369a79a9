"""Pareto frontier of validation perplexity vs training throughput, from a summary CSV.

    python train/plot_frontier.py --summary results/routing_sweep_summary.csv \
        --filter-E 128 --filter-dim 256 --out results/routing_frontier.png

Points are the seed means (``row_type == mean``; run rows when the CSV has none) with error bars of
one standard deviation over seeds on both axes; colour = router, marker = top-k, label = capacity
factor. The frontier line joins the non-dominated causally valid points (no other point is at least
as fast and at least as good, and better in one). Expert-choice is not a causal LM router (it ranks
the whole batch, the future included): its points are hollow, kept off the frontier, and the legend
says "not causal". ``--select semantics=ours`` keeps one semantics where a summary holds several
(the points are labelled with theirs otherwise).
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

MARKERS = {1: "o", 2: "s", 3: "D", 4: "^", 8: "v"}


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def load_points(summary: str, x: str, y: str, filter_E=None, filter_dim=None, select: dict | None = None) -> list[dict]:
    """Points of the summary; ``select`` keeps rows whose columns equal the given strings
    (e.g. {"semantics": "ours", "max_steps": "1200"})."""
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    if any(r.get("row_type") == "mean" for r in rows):
        rows = [r for r in rows if r.get("row_type") == "mean"]
    rows = [r for r in rows if all(str(r.get(k, "")).strip() == v for k, v in (select or {}).items())]
    pts = []
    for r in rows:
        if filter_E is not None and cell_float(r.get("num_experts")) != float(filter_E):
            continue
        if filter_dim is not None and cell_float(r.get("dim")) != float(filter_dim):
            continue
        px, py = cell_float(r.get(x)), cell_float(r.get(y))
        if px is None or py is None:
            continue
        causal = r.get("causal_safe", "")
        pts.append({
            "x": px, "y": py, "xerr": cell_float(r.get(x + "_std")) or 0.0, "yerr": cell_float(r.get(y + "_std")) or 0.0,
            "router": r.get("router", "?"), "k": int(cell_float(r.get("top_k")) or 0), "cf": r.get("capacity_factor", ""),
            "causal_safe": _truthy(causal) if causal != "" else r.get("router") != "expert-choice",
            "semantics": r.get("semantics") or "ours",
        })
    return pts


def pareto(points: list[dict]) -> list[dict]:
    """Non-dominated points for (x higher better, y lower better), sorted by x."""
    front = []
    for p in points:
        dominated = any(q is not p and q["x"] >= p["x"] and q["y"] <= p["y"] and (q["x"] > p["x"] or q["y"] < p["y"])
                        for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["x"])


def plot(points: list[dict], out: str, x_label: str, y_label: str, title: str) -> list[dict]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    routers = sorted({p["router"] for p in points})
    colours = {r: plt.cm.tab10(i % 10) for i, r in enumerate(routers)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for p in points:
        c = colours[p["router"]]
        ax.errorbar(p["x"], p["y"], xerr=p["xerr"], yerr=p["yerr"], fmt="none", ecolor=c, alpha=0.6, capsize=2)
        ax.scatter(p["x"], p["y"], marker=MARKERS.get(p["k"], "o"), s=60, linewidths=1.5,
                   facecolors=c if p["causal_safe"] else "none", edgecolors=c, zorder=3)
        sem = f", {p.get('semantics')}" if len({q.get("semantics") for q in points}) > 1 else ""
        ax.annotate(f"cf {p['cf']}{sem}", (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto([p for p in points if p["causal_safe"]])
    if front:
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "k--", lw=1, zorder=2)
    handles = [Line2D([], [], marker="o", ls="", color=colours[r], label=r) for r in routers]
    handles += [Line2D([], [], marker=MARKERS.get(k, "o"), ls="", color="grey", label=f"k={k}")
                for k in sorted({p["k"] for p in points})]
    if front:
        handles.append(Line2D([], [], ls="--", color="k", label="Pareto frontier (causal runs)"))
    if any(not p["causal_safe"] for p in points):
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="k",
                              label="hollow: not causal (expert-choice)"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=130)
    return front


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Pareto frontier: validation perplexity vs tokens/s (seed means)")
    p.add_argument("--summary", required=True, help="CSV from train/summarize.py")
    p.add_argument("--filter-E", type=int, default=None)
    p.add_argument("--filter-dim", type=int, default=None)
    p.add_argument("--out", default="runs/routing_frontier.png")
    p.add_argument("--x", default="auto", help="x column (higher is better); auto: bench_tokens_per_s "
                   "(throughput timed alone) where the summary has it, else median_tokens_per_s")
    p.add_argument("--y", default="final_val_ppl", help="y column (lower is better), e.g. best_val_ppl")
    p.add_argument("--select", default="", help="key=value[,key=value]: only these rows, e.g. semantics=ours "
                   "(a summary can hold the seed preset and ours side by side)")
    args = p.parse_args(argv)
    from train.plot_semantics import parse_selection
    try:
        select = parse_selection(args.select)
    except ValueError as e:
        p.error(str(e))
    if args.x == "auto":
        with open(args.summary, newline="") as f:
            has_bench = any(r.get("bench_tokens_per_s") for r in csv.DictReader(f))
        args.x = "bench_tokens_per_s" if has_bench else "median_tokens_per_s"
    pts = load_points(args.summary, args.x, args.y, args.filter_E, args.filter_dim, select)
    if not pts:
        print(f"plot_frontier.py: no rows with {args.x} and {args.y} after the filters", file=sys.stderr)
        return 1
    filters = ", ".join(f for f in (f"E={args.filter_E}" if args.filter_E else "",
                                    f"dim={args.filter_dim}" if args.filter_dim else "") if f)
    x_note = "" if any(p["xerr"] for p in pts) else f"; {args.x}: one measurement per configuration"
    title = f"{args.y} vs {args.x}" + (f" ({filters})" if filters else "") + f"\nmean ± std over seeds{x_note}"
    front = plot(pts, args.out, args.x.replace("_", " ") + " (higher is better)",
                 args.y.replace("_", " ") + " (lower is better)", title)
    print(f"wrote {args.out}: {len(pts)} points, frontier: "
          + ", ".join(f"{p['router']} k={p['k']} cf={p['cf']}" for p in front))
    return 0


if __name__ == "__main__":
    sys.exit(main())
