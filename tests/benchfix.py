"""pytest-benchmark fixture for the routing stages: CUDA-synchronised timings with full metadata.

    from benchfix import stage_benchmark  # noqa: F401  (the fixture)

    def test_pack(stage_benchmark):
        rec = stage_benchmark("pack", backend="torch")

`stage_benchmark(stage, backend="torch", **case_options)` builds the stage with
`moe_routing_bench.harness.cases` (Case, make_inputs, stage_callables: the callables the CLI and asv
time) and times it with `moe_routing_bench.measure`, the CLI's timer (GPU: CUDA events, each
repetition behind an L2 flush, all queued ahead so launch overhead is hidden; CPU: perf_counter).
pytest-benchmark then records measure's samples, in order, as its rounds (`benchmark.pedantic`
over a no-op with a timer that replays them), so its stats and JSON are those of the CLI's timer.
- GPU: DESIGN section 7's main case, bf16, 100 repetitions after 10 warm-up calls (at least 50 ms),
  as the CLI's defaults.
- CPU: one torch thread, fixed allocator thresholds, small sizes, 20 repetitions after 3 (a
  regression signal, not a claim).
- `extra_info`: device, device name, torch/triton versions, case (shapes, dtype, workload, seed),
  strict bytes, GB/s, tokens/s and the timer; `stats.median` is what asv_store exports.

In a plain `pytest` run the benchmarks run too (pytest-benchmark enabled by default); under
`--benchmark-disable` (or xdist) pytest-benchmark calls the target once and there are no stats:
the fixture then checks that the stage runs and returns its record without timings.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from moe_routing_bench.harness import cases as bench
from moe_routing_bench.harness import records as store
from moe_routing_bench.harness.timing import measure, stable_cpu_allocator
from moe_routing_bench.routing.backends import backend_unavailable_reason, get_backend

ROUNDS = {"cpu": (20, 3), "cuda": (100, 10)}  # (repetitions, warm-up calls)
TIMER = {"cuda": "moe_routing_bench.measure: CUDA events around the stage, each behind an L2 flush (host ahead)",
         "cpu": "moe_routing_bench.measure: perf_counter around the stage, one torch thread"}


def replay_timer(samples_s) -> Callable[[], float]:
    """A pytest-benchmark timer whose rounds last `samples_s` in turn: calls alternate start
    (return the clock) and end (advance the clock by the next sample, return it)."""
    clock, started, samples = 0.0, False, iter(samples_s)

    def timer() -> float:
        nonlocal clock, started
        if started:
            clock += next(samples)
        started = not started
        return clock

    return timer


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
        reps, warmup = ROUNDS["cuda" if cuda else "cpu"]
        benchmark.group = f"{stage} {case.device}"
        timing = None
        if benchmark.disabled:
            benchmark.pedantic(fn)  # runs the stage once
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if not cuda else threads)  # 2 threads on 2 vCPUs: bimodal samples
            try:
                timing = measure(fn, case.device, warmup=warmup, iters=reps)
            finally:
                torch.set_num_threads(threads)
            benchmark._timer = replay_timer(timing.samples_s)  # pytest-benchmark 5.x reads it for each round
            benchmark.pedantic(lambda: None, rounds=timing.reps, iterations=1)
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
            info["measure_median_us"] = timing.median_us  # the same samples: equal to median_us
            info["tokens_per_s"] = case.num_tokens / median
            if nbytes is not None:
                info["GBps"] = nbytes / median / 1e9
        benchmark.extra_info.update(info)
        return info

    return run

