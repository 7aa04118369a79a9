"""Step-wise curves of one or more training logs.

    python train/plot_curve.py --log runs/x/train_log.jsonl --metrics train_loss,val_loss,ppl --out curve.png

One panel per metric, one line per log (several --log values overlay runs); records without the
metric (val_loss between evaluations) are skipped; the done record is ignored. A per-layer metric
(``load_cv_kept_per_layer``, any ``<stat>_per_layer`` of the log) draws one line per MoE layer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

import moe_routing_bench as mrb  # noqa: E402
from train.figures import save_figure  # noqa: E402


def read_log(path: str) -> list[dict]:
    """The step records of a train_log.jsonl (its final "done" record left out)."""
    return [r for r in mrb.read_jsonl(path) if not r.get("done")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot step-wise metrics of train_log.jsonl files")
    p.add_argument("--log", nargs="+", required=True, help="train_log.jsonl path(s)")
    p.add_argument("--metrics", default="train_loss,val_loss,ppl", help="comma list of record keys")
    p.add_argument("--out", default="runs/training_curve.png", help="PNG to write (runs/ is git-ignored)")
    p.add_argument("--labels", default=None, help="comma list of line labels (default: run folder names)")
    args = p.parse_args(argv)
    for log in args.log:
        if not Path(log).is_file():
            p.error(f"no training log at {log} (a run writes <outdir>/train_log.jsonl)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    labels = args.labels.split(",") if args.labels else [Path(log).parent.name or log for log in args.log]
    logs = [read_log(log) for log in args.log]
    labels = [f"{lab} (not causal)" if rows and rows[-1].get("causal_safe") is False else lab
              for lab, rows in zip(labels, logs)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.6 * len(metrics)), sharex=True, squeeze=False)
    plotted = 0
    for ax, m in zip(axes[:, 0], metrics):
        for rows, label in zip(logs, labels):
            pts = [(r["step"], r[m]) for r in rows if r.get(m) is not None]
            series = [(label, pts)]
            if pts and isinstance(pts[0][1], list):  # one value per MoE layer
                layers = len(pts[0][1])
                series = [(f"{label} layer {i}", [(s, v[i]) for s, v in pts if len(v) > i]) for i in range(layers)]
            for name, line in series:
                if line:
                    ax.plot(*zip(*line), marker="." if len(line) < 40 else None, label=name)
                    plotted += 1
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    for ax in axes[:, 0]:
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, args.out, dpi=120)
    if not plotted:
        print(f"plot_curve.py: none of {metrics} found in {args.log}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
