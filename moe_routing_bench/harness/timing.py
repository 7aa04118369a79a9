"""Timing (DESIGN section 5): warm-up, many repetitions, median with p10/p90.

GPU: CUDA events around each repetition, an optional L2 flush before it (outside the events: a
read of 256 MiB, so no dirty lines are left for the timed kernel to write back),
optionally the region captured once as a CUDA graph and timed as replays (small kernels).
CPU: time.perf_counter; CPU numbers are for regressions, not for claims.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    mean_s: float
    reps: int
    method: str
    samples_s: tuple[float, ...] = field(default=(), repr=False, compare=False)  # in timing order

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6

    def as_record(self, prefix: str = "") -> dict:
        d = asdict(self)
        del d["samples_s"]
        return {f"{prefix}{k}": v for k, v in d.items()}


def _summarise(samples_s: list[float], method: str) -> Timing:
    ordered = sorted(samples_s)
    n = len(ordered)

    def q(frac: float) -> float:
        return ordered[min(n - 1, max(0, round(frac * (n - 1))))]

    return Timing(statistics.median(ordered), q(0.1), q(0.9), statistics.fmean(ordered), n, method, tuple(samples_s))


def stable_cpu_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (no dynamic adjustment) in this process; True when set.

    With glibc's dynamic threshold a process sometimes stays in a state where every large tensor
    is mmapped and page-faulted afresh: on a 2-core VM 1 process in ~10 timed CPU combine 5x
    slower for its whole life. Fixed thresholds removed that (0 in 26). No-op off glibc.
    (suite/gate.py's worker inlines a copy: it runs in trees from before this module existed.)"""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1 << 28)) and bool(libc.mallopt(-1, 1 << 28))  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def measure(
    fn: Callable[[], object],
    device: torch.device | str,
    *,
    warmup: int = 10,
    iters: int = 100,
    flush_l2: bool = True,
    cuda_graph: bool = False,
    warmup_s: float | None = 0.05,
    after_warmup: Callable[[], object] | None = None,
) -> Timing:
    """Time `fn()` (which must not allocate what it measures outside itself) on `device`.

    Warm-up: `warmup` calls; on CUDA at least one, continued until `warmup_s` seconds have passed
    (long enough for the clocks to leave idle). `warmup_s=None`: exactly `warmup` calls, e.g. when
    every rank must call a collective equally often. `after_warmup` (e.g. `dist.barrier`) runs once
    after the warm-up, after a device synchronize, before the first timed call."""
    device = torch.device(device)
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters}, {warmup}")
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        if after_warmup is not None:
            after_warmup()
        samples = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return _summarise(samples, "perf_counter")

    torch.cuda.synchronize(device)
    if warmup_s is None:
        for _ in range(warmup):
            fn()
    else:
        deadline = time.perf_counter() + warmup_s
        done = 0
        while done < max(warmup, 1) or time.perf_counter() < deadline:
            fn()
            done += 1
            if done % 8 == 0:
                torch.cuda.synchronize(device)
    if after_warmup is not None:
        torch.cuda.synchronize(device)
        after_warmup()
    target = fn
    if cuda_graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn()  # allocations of the warm-up land in the graph pool's predecessor
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        target = graph.replay
        target()
    # The flush reads a buffer larger than L2 (a write would leave dirty lines that the timed
    # kernel must write back, charging it for the flush: ~3-5% of a bandwidth-bound kernel on H100).
    flush = torch.ones(256 * 2**20 // 4, dtype=torch.int32, device=device) if flush_l2 else None
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        if flush is not None:
            flush.sum()
        start.record()
        target()
        end.record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) / 1e3 for s, e in events]
    return _summarise(samples, "cuda_graph_events" if cuda_graph else "cuda_events")


def copy_bandwidth(device: torch.device | str, num_bytes: int | None = None, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written), measured now."""
    device = torch.device(device)
    if num_bytes is None:
        num_bytes = 2**30 if device.type == "cuda" else 64 * 2**20
    src = torch.randn(num_bytes // 4, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, warmup=3, iters=iters, flush_l2=False)
    return 2 * src.numel() * 4 / t.median_s


def matmul_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                 warmup_s: float = 0.05) -> float:
    """Dense n x n x n matmul rate in FLOP/s, measured now (the compute ceiling for layer numbers).
    `warmup_s`: seconds of products before timing; a few seconds put a GPU at its power limit, where a
    sustained workload runs (an H200 at 700 W: ~1500 MHz and 670 TFLOP/s, against 780 in a short burst)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = measure(lambda: a @ b, device, warmup=3, iters=20, flush_l2=False, warmup_s=warmup_s)
    return 2 * n**3 / t.median_s
