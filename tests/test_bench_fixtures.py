"""pytest-benchmark tests of the routing stages (tests/benchfix.py): `pytest --benchmark-only` runs
them, small on CPU, DESIGN section 7's main case on a GPU; a plain `pytest` run runs them too."""
from __future__ import annotations

import pytest

from benchfix import runnable_backends, stage_benchmark  # noqa: F401  (fixture)
from moe_routing_bench.harness.cases import STAGES


@pytest.mark.parametrize("backend", runnable_backends())
@pytest.mark.parametrize("stage", STAGES)
def test_stage(stage_benchmark, stage, backend):  # noqa: F811
    info = stage_benchmark(stage, backend)
    assert info["stage"] == stage and info["backend"] == backend and info["device_name"]
    if "median_us" in info:  # absent under --benchmark-disable
        assert info["median_us"] > 0
        assert info["median_us"] == pytest.approx(info["measure_median_us"], rel=1e-9)  # pytest-benchmark saw measure's samples
        assert ("GBps" in info) == (stage in ("pack", "combine", "routing_path"))


@pytest.mark.parametrize("workload", ["zipf", "hot"])
def test_routing_path_skewed(stage_benchmark, workload):  # noqa: F811
    info = stage_benchmark("routing_path", "torch", workload=workload)
    assert info["workload"] == workload


def test_replay_timer_rounds_last_the_samples():
    from benchfix import replay_timer

    timer, samples = replay_timer([3e-6, 1e-6, 2e-6]), []
    for _ in range(3):
        start = timer()
        samples.append(timer() - start)
    assert samples == pytest.approx([3e-6, 1e-6, 2e-6], rel=1e-9)
