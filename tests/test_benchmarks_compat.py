"""benchmarks/ (the working tree's, as asv uses them for every commit) run against the package of a
commit from before the public API (bfe3dab: moe_routing_bench.bench, .backends, .layer with
positional MoELayer arguments, .timing), of the first public API (65bd092: no MoEConfig) and of this
tree: `benchmarks/common.api()`."""
from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEFORE_RESTRUCTURE = "bfe3dab"
FIRST_PUBLIC_API = "65bd092"  # MoELayer took its arguments directly (no MoEConfig yet)

RUN = r"""
import sys
sys.path.insert(0, sys.argv[1])  # the package under test
sys.path.insert(1, sys.argv[2])  # the working tree's benchmarks/ (as asv's benchmark_dir)
import moe_routing_bench
assert moe_routing_bench.__file__.startswith(sys.argv[1]), moe_routing_bench.__file__
from benchmarks import bench_capacity, bench_layer, bench_pack
from benchmarks.common import api
p = bench_pack.Pack(); p.setup("torch", "T1024-H256-E16-k2", "uniform"); p.time_pack()
layer = bench_layer.MoELayer(); layer.setup("torch", "T512-H128-E8-k2"); layer.time_forward_backward()
c = bench_capacity.Capacity(); c.setup("torch", "T1024-H256-E16-k2", 1.0, "zipf")
rate = c.track_avg_drop_rate("torch")
assert 0.0 < rate < 1.0, rate
print("public" if hasattr(moe_routing_bench, "stage_callables") else "old", round(rate, 4))
"""


def _package_of(commit: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "moe_routing_bench"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


@pytest.mark.slow
def test_the_suites_run_before_and_after_the_restructure(tmp_path):
    if subprocess.run(["git", "cat-file", "-e", f"{BEFORE_RESTRUCTURE}^{{commit}}"], cwd=ROOT).returncode:
        pytest.skip(f"{BEFORE_RESTRUCTURE} is not in this clone's history")
    rates = {}
    for label, commit in (("old", BEFORE_RESTRUCTURE), ("public", FIRST_PUBLIC_API), ("public", "HEAD")):
        tree = _package_of(commit, tmp_path / commit)
        out = subprocess.run([sys.executable, "-c", RUN, str(tree), str(ROOT)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        api, rate = out.stdout.split()
        assert api == label
        rates[commit] = float(rate)
    assert len(set(rates.values())) == 1, rates  # the same routing, the same drop rate


def test_history_subset_keeps_only_the_main_gpu_shape_of_the_chosen_backends():
    """MOE_BENCH_ASV_SUBSET=main with MOE_BENCH_ASV_BACKENDS: what a cheap GPU history runs (asv
    starts no process for a skipped combination); without them every GPU combination runs."""
    probe = ("import itertools, sys; sys.path.insert(0, sys.argv[1]); from benchmarks import bench_pack as b; "
             "f = b.Pack.track_pack_us; skip = set(f.skip_params); "
             "print(sorted(c for c in itertools.product(*b.Pack.params) if c not in skip))")
    env = {"MOE_BENCH_ASV_GPU": "1", "PATH": "/usr/bin:/bin"}

    def kept(**extra) -> list:
        out = subprocess.run([sys.executable, "-c", probe, str(ROOT)], env={**env, **extra}, capture_output=True,
                             text=True, check=True).stdout
        return ast.literal_eval(out)

    main = "T16384-H4096-E128-k2"
    assert kept(MOE_BENCH_ASV_SUBSET="main", MOE_BENCH_ASV_BACKENDS="torch,triton") == [
        ("torch", main, "uniform"), ("triton", main, "uniform")]
    everything = kept()
    assert len(everything) == 9 and {c[0] for c in everything} == {"torch", "compile", "triton"}  # 3 GPU shapes


class _CountingBenchmark:
    setups = calls = 0
    warmup_time = 0.0
    repeat = (3, 3, 5.0)

    def setup(self):
        type(self).setups += 1

    def time_call(self):
        type(self).calls += 1
        time.sleep(1e-4)


def test_asv_times_many_warm_calls_per_setup():
    """The CPU time_* numbers are means over batches of calls on inputs built once (the history's
    meaning). asv_runner 0.3 re-runs setup before every timed call (each sample one call on fresh
    inputs, 2-5x slower and noisier); pyproject pins asv_runner below it."""
    from asv_runner.benchmarks.time import TimeBenchmark

    bench = _CountingBenchmark()
    timer = TimeBenchmark("t._CountingBenchmark.time_call", bench.time_call,
                          [bench.time_call, bench, sys.modules[__name__]])
    timer.do_setup()
    result = timer.run()
    assert result["number"] > 1 and _CountingBenchmark.calls >= 10 * _CountingBenchmark.setups, \
        (result["number"], _CountingBenchmark.calls, _CountingBenchmark.setups)
