"""pytest-benchmark fixture for the routing stages: CUDA-synchronised timings with full metadata.

    from benchfix import stage_benchmark  # noqa: F401  (the fixture)

    def test_pack(stage_benchmark):
        rec = stage_benchmark("pack", backend="torch")

`stage_benchmark(stage, backend="torch", **case_options)` builds the stage with
`moe_routing_bench.bench` (Case, make_inputs, stage_callables: the callables the CLI and asv
time) and times it with `benchmark.pedantic`, the way `moe_routing_bench.timing.measure` (the
CLI's timer) does:
- GPU: CUDA events. Each round's `setup` queues an L2 flush (a read, as measure's) and a short GPU spin, without waiting,
  so the host enqueues the whole stage before the GPU reaches the start event; the timer
  (`timing.cuda_event_timer`) records the start event on its first call of a round and on the second
  records the end event, waits for it and returns the elapsed GPU time. The CLI's measure queues
  100 repetitions ahead the same way: launch overhead is hidden in both. DESIGN section 7's main
  case, bf16, 100 rounds after 10 warm-up rounds, as the CLI's defaults.
- CPU: perf_counter, one torch thread, fixed allocator thresholds, small sizes (a regression
  signal, not a claim).
- `extra_info`: device, device name, torch/triton versions, case (shapes, dtype, workload, seed),
  strict bytes, GB/s, tokens/s and the timer; `stats.median` is what asv_store exports.

In a plain `pytest` run the benchmarks run too (pytest-benchmark enabled by default); under
`--benchmark-disable` (or xdist) pytest-benchmark calls the target once and there are no stats:
the fixture then checks that the stage runs and returns its record without timings.
"""
from __future__ import annotations

import pytest
import torch

from moe_routing_bench.harness import cases as bench
from moe_routing_bench.harness import records as store
from moe_routing_bench.harness.timing import cuda_event_timer, stable_cpu_allocator
from moe_routing_bench.routing.backends import backend_unavailable_reason, get_backend

ROUNDS = {"cpu": (20, 3), "cuda": (100, 10)}  # (rounds, warm-up rounds)
TIMER = {"cuda": "CUDA events around the stage, queued behind an L2 flush and a GPU spin (host ahead)",
         "cpu": "perf_counter around the stage, one torch thread"}
SPIN_CYCLES = 4_000_000  # ~2 ms at H100 clocks: longer than the host needs to enqueue a stage


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_case(**options) -> bench.Case:
    """The case the benchmark tests time on this machine (options override; seed 17, bf16)."""
    dev = device()
    return bench.Case(**{**bench.main_shape(dev), "dtype": "bfloat16", "device": dev, **options}).validated()


def runnable_backends() -> list[str]:
    """torch everywhere; compile and triton only on a GPU (on CPU: compile time, the interpreter)."""
    if device() == "cpu":
        return ["torch"]
    return [b for b in ("torch", "compile", "triton") if backend_unavailable_reason(b) is None]


@pytest.fixture
def stage_benchmark(benchmark):
    def run(stage: str, backend: str = "torch", **case_options) -> dict:
        case = default_case(**case_options)
        if case.device == "cpu":
            stable_cpu_allocator()
        inputs = bench.make_inputs(case)
        fn = bench.stage_callables(get_backend(backend), case, inputs)[stage]
        cuda = case.device.startswith("cuda")
        # as timing.measure: read a buffer larger than L2 (a write would leave dirty lines to evict)
        flush = torch.ones(256 * 2**20 // 4, dtype=torch.int32, device=case.device) if cuda else None
        flush_out = torch.empty(1, dtype=torch.int64, device=case.device) if cuda else None

        def setup():
            if cuda:
                torch.sum(flush, dim=0, keepdim=True, dtype=torch.int64, out=flush_out)
                if hasattr(torch.cuda, "_sleep"):
                    torch.cuda._sleep(SPIN_CYCLES)

        rounds, warmup = ROUNDS["cuda" if cuda else "cpu"]
        benchmark.group = f"{stage} {case.device}"
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if not cuda else threads)  # 2 threads on 2 vCPUs: bimodal samples
        if cuda:
            benchmark._timer = cuda_event_timer()  # pytest-benchmark 5.x reads it for each round
        try:
            benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
        finally:
            torch.set_num_threads(threads)
        env = store.environment(case.device)
        info = {"stage": stage, "backend": backend, **case.as_record(), "device_name": env["device_name"],
                "torch": env["torch"], "triton": env["triton"], "timer": TIMER["cuda" if cuda else "cpu"]}
        nbytes = bench.stage_bytes(stage, case)
        if nbytes is not None:
            info["bytes"] = nbytes
        stats = benchmark.stats  # None when pytest-benchmark is disabled: the target ran once
        if stats is not None:
            median = stats.stats.median
            info["median_us"] = median * 1e6
            info["tokens_per_s"] = case.num_tokens / median
            if nbytes is not None:
                info["GBps"] = nbytes / median / 1e9
        benchmark.extra_info.update(info)
        return info

    return run

