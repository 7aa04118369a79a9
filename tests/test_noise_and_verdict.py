"""Noise figures and thresholds (tools/asv_runs.py) and the verdict table (moe_routing_bench.suite.verdict)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from moe_routing_bench.suite import store, verdict

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("asv_runs", ROOT / "tools" / "asv_runs.py")
asv_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(asv_runs)


def test_p95_of_pairwise_relative_differences():
    assert asv_runs.p95([1.0, 1.0, 1.0]) == 0.0
    assert asv_runs.p95([1.0, 1.1]) == pytest.approx(0.1, abs=0.002)  # pairs both ways: |1.1/1 - 1| and |1/1.1 - 1|
    values = [100.0] * 9 + [150.0]
    assert 0.3 < asv_runs.p95(values) <= 0.5  # one outlier in ten runs sets the 95th percentile


@pytest.mark.parametrize("spread,threshold", [(0.0, 0.03), (0.01, 0.03), (0.02, 0.03), (0.021, 0.04), (0.1, 0.15), (0.5, 0.75)])
def test_threshold_rule(spread, threshold):
    assert asv_runs.threshold_of(spread) == pytest.approx(threshold)


def test_noise_record_takes_the_worst_combination_and_skips_single_values():
    values = {("bench_pack.Pack.track_pack_us", ("torch", "S")): [100.0, 101.0, 100.5],
              ("bench_pack.Pack.track_pack_us", ("triton", "S")): [50.0, 55.0],
              ("bench_topk.TopK.track_topk_us", ("torch", "S")): [10.0]}  # one run: no spread yet
    rec = asv_runs.noise_record(values, machine="m", runs=3)
    assert set(rec["benchmarks"]) == {"bench_pack.Pack.track_pack_us"}
    pack = rec["benchmarks"]["bench_pack.Pack.track_pack_us"]
    assert pack["p95_rel_diff"] == pytest.approx(0.1, abs=0.002)  # the triton combination: 55 / 50
    assert pack["threshold"] == pytest.approx(0.15) and rec["stage_threshold"] == pytest.approx(0.15)
    assert rec["pytest_benchmark_compare_fail"] == "median:15%" and rec["machine"] == "m"
    assert pack["by_backend"] == {"torch": 0.03, "triton": 0.15}


def test_thresholds_block_of_asv_conf_follows_every_machines_noise_file(tmp_path):
    conf = tmp_path / "asv.conf.json"
    conf.write_text((ROOT / "asv.conf.json").read_text())
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "a.json").write_text(json.dumps({"benchmarks": {"bench_pack.Pack.track_pack_us": {
        "threshold": 0.3, "by_backend": {"torch": 0.3, "triton": 0.03}}}}))
    (noise / "b.json").write_text(json.dumps({"benchmarks": {"bench_pack.Pack.track_pack_us": {"threshold": 0.04},
                                                             "bench_pack.Pack.time_pack": {"threshold": 0.6}}}))
    asv_runs.update_conf_thresholds(conf, noise)
    thresholds = verdict.load_thresholds(conf)

    def t(name):
        return verdict.threshold_for(name, thresholds)

    # asv's names: benchmark(params)@branch; per backend where measured, the benchmark's largest otherwise
    assert t("bench_pack.Pack.track_pack_us('triton', 'T16384-H4096-E128-k2', 'uniform')@main") == 0.03
    assert t("bench_pack.Pack.track_pack_us('torch', 'T16384-H4096-E128-k2', 'uniform')") == 0.3
    assert t("bench_pack.Pack.track_pack_us('compile', 'T16384-H4096-E128-k2', 'uniform')") == 0.3
    assert t("bench_pack.Pack.track_pack_us") == 0.3  # the larger of two machines
    assert t("bench_pack.Pack.time_pack('torch', 'T1024-H256-E16-k2', 'uniform')") == 0.6
    assert t("bench_pack.Pack.track_pack_usX('triton', 'S')") == verdict.DEFAULT_THRESHOLD
    assert t("exported.Training.track_x") == 1.0


def _export(tmp_path, store_dir, commit, median):
    report = {"commit_info": {"id": commit}, "benchmarks": [{"name": "t", "stats": {"median": median}}]}
    src = tmp_path / f"{commit}.json"
    src.write_text(json.dumps(report))
    store.export_pytest_benchmark(src, store_dir, "m1")


def test_verdict_flags_only_changes_beyond_the_threshold(tmp_path, capsys, monkeypatch):
    commits = subprocess.run(["git", "rev-list", "-3", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    if len(commits) < 3:
        pytest.skip("needs three commits of history")
    s = tmp_path / "asv"
    for commit, median in zip(commits, (1.00e-5, 1.03e-5, 1.20e-5)):
        _export(tmp_path, s, commit, median)
    conf = tmp_path / "asv.conf.json"
    conf.write_text('{"regressions_thresholds": {"exported\\\\..*": 0.05}}')
    monkeypatch.chdir(ROOT)
    args = ["--machine", "m1", "--results-dir", str(s), "--config", str(conf), "--fail", "-b", "median"]
    assert verdict.main([commits[0], commits[1], *args]) == 0  # 3% < 5%
    out = capsys.readouterr().out
    assert re.search(r"\| same", out) and "0 slower" in out
    assert verdict.main([commits[0], commits[2], *args]) == 1  # 20% > 5%: slower
    assert "| slower" in capsys.readouterr().out
    assert verdict.main(["nonexistent-ref", commits[0], *args]) == 2


@pytest.mark.slow
def test_planted_slowdown_wraps_the_triton_stage_and_keeps_its_result(tmp_path):
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "moe_routing_bench", "tools/plant_slowdown.py"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    import sys

    assert subprocess.run([sys.executable, str(tmp_path / "tools" / "plant_slowdown.py"), "pack", "0.05"],
                          capture_output=True).returncode == 0
    assert subprocess.run([sys.executable, str(tmp_path / "tools" / "plant_slowdown.py"), "pack", "0.05"],
                          capture_output=True).returncode == 2  # once only
    code = """
import os, sys, torch
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, sys.argv[1])
import moe_routing_bench as mrb
assert mrb.__file__.startswith(sys.argv[1])
b, ref = mrb.get_backend("triton"), mrb.get_backend("torch")
assert b.pack.__name__ == "pack" and "_planted_pack" in b.pack.__code__.co_names
case = mrb.Case(64, 32, 4, 2, dtype="float32").validated()
inputs = mrb.make_inputs(case)
routing = ref.route(inputs.logits_TE, "softk", 2)
plan = ref.build_plan(routing)
torch.testing.assert_close(b.pack(inputs.x_TH, plan), ref.pack(inputs.x_TH, plan))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.mark.slow
def test_history_builds_each_commit_into_asv_runs_environment_and_relabels_it(tmp_path, monkeypatch):
    """tools/asv_runs.py history: one asv run per commit, in the order given, each commit's own package
    in the `virtualenv-host` environment of `asv run`, results relabelled
    with the real commit and its date, bundled in one tar."""
    import tarfile

    from asv.results import Results

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # asv's machine file and the caches stay here
    old = "477bff687138d09719b0e4b056de2cec36e27b28"  # before the public API: benchmarks' api() adapts
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    bundle = tmp_path / "bundle.tar"
    asv_runs.history([old, head], bundle, r"bench_topk\..*time_", "history-test")
    with tarfile.open(bundle) as tf:
        names = sorted(tf.getnames())
        tf.extractall(tmp_path / "out", filter="data")
    runs = [n for n in names if not n.endswith("machine.json")]
    assert [n.split("/")[1][:8] for n in runs] == sorted([old[:8], head[:8]])
    assert all(re.fullmatch(r"history-test/[0-9a-f]{8}-virtualenv-host-py[\d.]+-numpy-torch[\w.+]+\.json", n) for n in runs)
    dates = {}
    for n in runs:
        r = Results.load(str(tmp_path / "out" / n))
        values = r.get_result_value("bench_topk.TopK.time_topk", r.get_result_params("bench_topk.TopK.time_topk"))
        assert any(v is not None and v > 0 for v in values), n  # measured, not only skipped
        dates[r.commit_hash] = r.date
    assert set(dates) == {old, head}
    assert dates[old] == store.resolve_commit(old, ROOT)[1] < dates[head]  # the commits' own dates


def test_pytest_threshold_for_one_backend_leaves_the_others_slow_modes_out(tmp_path):
    noise = {"pytest_benchmark_compare_fail": "median:307%", "benchmarks": {
        "bench_plan.Plan.track_plan_us": {"threshold": 3.07, "by_backend": {"torch": 3.07, "triton": 0.15}},
        "bench_pack.Pack.track_pack_us": {"threshold": 0.03, "by_backend": {"torch": 0.03, "triton": 0.03}},
        "bench_layer.MoELayer.track_forward_us": {"threshold": 0.5, "by_backend": {"triton": 0.5}}}}  # not a stage
    (tmp_path / "gpu-x.json").write_text(json.dumps(noise))
    assert verdict.pytest_threshold("gpu-x", tmp_path) == "median:307%"
    assert verdict.pytest_threshold("gpu-x", tmp_path, backend="triton") == "median:15%"
    assert verdict.pytest_threshold("gpu-x", tmp_path, backend="torch") == "median:307%"
    assert verdict.pytest_threshold("no-such-machine", tmp_path, backend="triton") == "median:10%"
    with pytest.raises(ValueError, match="compile"):
        verdict.pytest_threshold("gpu-x", tmp_path, backend="compile")
