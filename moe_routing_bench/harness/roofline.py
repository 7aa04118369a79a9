"""Roofline report: each primitive's achieved bandwidth as a percentage of the device copy.

`run_roofline` times every stage of `bench.STAGES` for each shape and backend with
`bench.bench_stages` (CUDA events and an L2 flush on a GPU, perf_counter on a CPU), against the
device-to-device copy bandwidth measured in the same run (`timing.copy_bandwidth`). Pack, combine
and the routing path carry strict bytes ((1+K)*H*b per token each), so they get `pct_of_copy`;
top-k, plan and the two in sequence (`route_plan`) are latency-bound and are reported by time.
`plot_roofline` draws both.

The copy moves one byte written per byte read; pack writes K rows per row read, and on an H200 even an
index-free kernel with that mix stays below the copy (94.5% at K=2, 89.6% at K=8). So pack and combine
records also carry the same backend's time on the `stream` workload (same shape, dropless: the rows
move in K sequential streams, no scatter) as `stream_us`, and `pct_of_stream` = stream_us / median_us:
how much of a stage's distance to the copy is its scatter.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace

from . import timing
from .records import atomic_target
from ..routing.backends import backend_unavailable_reason
from .cases import STAGES, Case, bench_stages, make_inputs, resolve_device

BYTE_STAGES = ("pack", "combine", "routing_path")
LATENCY_STAGES = ("topk", "plan", "route_plan")
STREAM_STAGES = ("pack", "combine")  # stages that get the `stream` reference


def _as_case(shape, dtype: str, device: str, workload: str) -> Case:
    if isinstance(shape, Case):
        return shape
    if isinstance(shape, dict):
        kw = {"dtype": dtype, "device": device, "workload": workload, **shape}
        return Case(**kw)
    T, H, E, K = shape
    return Case(int(T), int(H), int(E), int(K), dtype=dtype, device=device, workload=workload)


def run_roofline(
    shapes: Iterable,
    backends: Sequence[str] = ("torch", "compile", "triton"),
    device: str = "auto",
    dtype: str = "bfloat16",
    iters: int = 50,
    *,
    warmup: int = 5,
    workload: str = "uniform",
    stages: Sequence[str] = STAGES,
    copy_bytes_per_s: float | None = None,
    flush_l2: bool = True,
) -> list[dict]:
    """One record per (shape, backend, stage), as `bench.bench_stages` writes them, plus `copy_GBps`.

    `shapes`: `bench.Case`s, dicts of Case fields, or (T, H, E, K) tuples (then `dtype`, `device`
    and `workload` apply). The copy bandwidth is measured once here unless given. Backends that
    cannot run on this machine are skipped with a warning."""
    dev = str(resolve_device(device))
    copy = copy_bytes_per_s or timing.copy_bandwidth(dev)
    records: list[dict] = []
    runnable = []
    for name in backends:
        reason = backend_unavailable_reason(name)
        if reason is None:
            runnable.append(name)
        else:
            warnings.warn(f"roofline: skipping backend {name}: {reason}", stacklevel=2)
    timed = dict(warmup=warmup, iters=iters, flush_l2=flush_l2, copy_bytes_per_s=copy)
    streamed = tuple(s for s in STREAM_STAGES if s in stages)
    for shape in shapes:
        case = _as_case(shape, dtype, dev, workload).validated()
        inputs = make_inputs(case)
        stream_case = replace(case, workload="stream", capacity_factor=None, layout="ragged", strategy="softk")
        stream_inputs = make_inputs(stream_case) if streamed else None
        for name in runnable:
            recs = bench_stages(case, name, stages=tuple(stages), inputs=inputs, **timed)
            refs = {r["name"]: r for r in (bench_stages(stream_case, name, stages=streamed, inputs=stream_inputs, **timed)
                                           if streamed else [])}
            for rec in recs:
                ref = refs.get(rec["name"])
                if ref is not None:
                    rec["stream_us"] = ref["median_us"]
                    rec["pct_of_stream"] = 100.0 * ref["median_us"] / rec["median_us"]
                rec["suite"] = "roofline"
                records.append(rec)
    return records


def _label(rec: dict) -> str:
    return f"T={rec['num_tokens']} H={rec['hidden_dim']} E={rec['num_experts']} k={rec['top_k']} {rec['workload']}"


def plot_roofline(records: Sequence[dict], png_path: str) -> str:
    """Bar chart (matplotlib Agg): % of copy per byte-moving primitive and backend, time annotated, with a
    black tick where the same stage on the `stream` workload reaches; a second panel per shape gives
    top-k, plan and route_plan times. Cache-resident bars (`cases.is_cache_resident`) are hatched and
    labelled `cache`: they are not bandwidth. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(_label(r) for r in records))
    backends = list(dict.fromkeys(r["backend"] for r in records))
    fig, axes = plt.subplots(len(shapes), 2, figsize=(13, 3.6 * max(1, len(shapes))), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(backends))
    copy = next((r.get("copy_GBps") for r in records if r.get("copy_GBps")), None)
    for row, shape in enumerate(shapes):
        recs = {(r["backend"], r["name"]): r for r in records if _label(r) == shape}
        for col, (stages, metric) in enumerate([(BYTE_STAGES, "pct_of_copy"), (LATENCY_STAGES, "time_median_s")]):
            ax = axes[row][col]
            stream_labelled = False
            for i, backend in enumerate(backends):
                xs, ys, notes, cached = [], [], [], []
                for j, stage in enumerate(stages):
                    rec = recs.get((backend, stage))
                    if rec is None or rec.get(metric) is None:
                        continue
                    xs.append(j + (i - (len(backends) - 1) / 2) * width)
                    ys.append(rec[metric] * (1e6 if metric == "time_median_s" else 1.0))
                    if metric == "pct_of_copy" and rec.get("pct_of_stream"):
                        ax.hlines(ys[-1] * 100.0 / rec["pct_of_stream"], xs[-1] - width / 2, xs[-1] + width / 2,
                                  colors="black", lw=1.5, label=None if stream_labelled else "same stage, stream workload")
                        stream_labelled = True
                    cached.append(metric == "pct_of_copy" and bool(rec.get("cache_resident")))
                    notes.append(f"{rec['time_median_s'] * 1e6:.0f}us" + (" cache" if cached[-1] else ""))
                bars = ax.bar(xs, ys, width=width, label=backend)
                for bar, in_cache in zip(bars, cached):
                    if in_cache:  # above the copy ceiling: cache-resident, not a bandwidth
                        bar.set_hatch("//")
                        bar.set_alpha(0.5)
                for bar, note in zip(bars, notes):
                    ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                                va="bottom", fontsize=7, rotation=90 if len(backends) > 2 else 0)
            ax.set_xticks(range(len(stages)))
            ax.set_xticklabels(stages)
            if metric == "pct_of_copy":
                ax.axhline(100.0, color="gray", lw=0.8, ls="--")
                ax.set_ylabel("% of copy bandwidth\n(hatched: cache-resident)")
                ax.set_title(f"{shape}" + (f" (copy {copy:.0f} GB/s)" if copy else ""), fontsize=9)
            else:
                ax.set_ylabel("median time (us)")
                ax.set_title("latency-bound stages", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_target(png_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png_path


__all__ = ["run_roofline", "plot_roofline"]
