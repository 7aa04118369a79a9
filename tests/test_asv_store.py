"""The result store (moe_routing_bench/suite/store.py): exporters, asv's own file classes, locking
and path checks; and the published dashboard rendered offline."""
from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from moe_routing_bench.suite import store as asv_store

ROOT = Path(__file__).resolve().parents[1]
HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
MACHINE = "test-machine"

# train/summarize.py's layout: a row per run, then a mean row per configuration (with *_std).
SUMMARY_COLUMNS = ["row_type", "run", "seed", "router", "num_experts", "top_k", "capacity_factor", "dim",
                   "device_name", "final_val_ppl", "final_val_ppl_std", "best_val_ppl", "median_tokens_per_s",
                   "mean_drop_rate", "mean_load_cv", "causal_safe"]
SUMMARY_ROWS = [
    ["run", "Rsoftk_E8_K2_CF1.25_S17", 17, "softk", 8, 2, 1.25, 64, "x86_64", 30.0, "", 29.0, 50000, 0.05, 0.30, True],
    ["run", "Rsoftk_E8_K2_CF1.25_S18", 18, "softk", 8, 2, 1.25, 64, "x86_64", 32.0, "", 31.0, 52000, 0.07, 0.34, True],
    ["run", "Rtop1_E8_K1_CFnone_S17", 17, "top1", 8, 1, "", 64, "x86_64", 40.0, "", 39.0, 60000, 0.0, 0.5, True],
    ["run", "Rsoftk_E8_K4_CF1.25_S17", 17, "softk", 8, 4, 1.25, 64, "x86_64", 28.0, "", 27.0, 40000, 0.04, 0.3, True],
    ["mean", "mean:Rsoftk_E8_K2_CF1.25", "", "softk", 8, 2, 1.25, 64, "x86_64", 31.0, 1.41, 30.0, 51000, 0.06, 0.32,
     True],
    ["mean", "mean:Rtop1_E8_K1_CFnone", "", "top1", 8, 1, "", 64, "x86_64", 40.0, 0.0, 39.0, 60000, 0.0, 0.5, True],
]


def write_summary(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_COLUMNS)
        w.writerows(SUMMARY_ROWS)
    return path


def result_values(path: Path, key: str) -> dict[tuple, float]:
    row = json.loads(path.read_text())["results"][key]
    return dict(zip(itertools.product(*row[1]), row[0]))


def test_training_router_label_names_an_unusual_k():
    label = asv_store.training_router_label
    assert [label("top1", "1"), label("softk", "2"), label("hash", 2), label("softk", "")] == ["top1", "softk", "hash", "softk"]
    assert label("top1", "2") == "top1 k=2" and label("softk [seed, recipe seed]", "4") == "softk [seed, recipe seed] k=4"
    assert label("top1 [seed, recipe seed]", "1") == "top1 [seed, recipe seed]"


def test_training_summary_export(tmp_path):
    store = tmp_path / "asv"
    path = asv_store.export_training_summary(write_summary(tmp_path / "s.csv"), store, MACHINE, commit=HEAD)
    assert path == store / MACHINE / f"{HEAD[:8]}-export-training-py{sys.version_info[0]}.{sys.version_info[1]}.json"
    data = json.loads(path.read_text())
    assert data["commit_hash"] == HEAD and data["params"]["machine"] == MACHINE and data["version"] == 2
    ppl = result_values(path, "exported.Training.track_final_val_ppl")
    assert ppl[("'softk'", "8", "1.25")] == 31.0  # mean of the two seeds, run rows only
    # top1 (k=1) and softk (k=2) share one parameter combination, so asv's first view draws both;
    # a router at another k is named with it
    assert ppl[("'top1'", "8", "None")] == 40.0  # empty capacity factor = dropless = None
    assert ppl[("'softk k=4'", "8", "1.25")] == 28.0
    assert ppl[("'softk'", "8", "None")] is None  # absent combination of the grid
    keys = set(data["results"])
    assert {"exported.Training.track_best_val_ppl", "exported.Training.track_median_tokens_per_s",
            "exported.Training.track_mean_drop_rate", "exported.Training.track_mean_load_cv"} <= keys
    assert not any(k.endswith(("_std", "track_seed", "track_dim", "track_num_experts")) for k in keys)
    registry = json.loads((store / "benchmarks.json").read_text())
    entry = registry["exported.Training.track_final_val_ppl"]
    assert entry["version"] == asv_store.EXPORT_VERSION and entry["unit"] == "ppl" and entry["type"] == "track"
    assert entry["param_names"] == ["router", "num_experts", "capacity_factor"]
    assert registry["exported.Training.track_median_tokens_per_s"]["unit"] == "tokens/s"
    machine = json.loads((store / MACHINE / "machine.json").read_text())
    assert machine["machine"] == MACHINE and "gpu" in machine and "cuda" in machine
    assert not [p for p in store.rglob(".*") if p.name != ".lock"]  # atomic writes leave no temp files
    from asv.results import Results  # asv itself reads what the store wrote

    loaded = Results.load(str(path))
    assert loaded.get_result_value("exported.Training.track_final_val_ppl", entry["params"]).count(None) == 3  # of 3 x 1 x 2


def test_export_merges_with_the_same_commit_and_env(tmp_path):
    store = tmp_path / "asv"
    rows = [json.dumps({"name": "pack", "backend": "torch", "num_tokens": 64, "hidden_dim": 32, "num_experts": 4,
                        "top_k": 2, "dtype": "bfloat16", "workload": "uniform", "median_us": 10.0, "device": "cpu"}),
            json.dumps({"name": "combine", "backend": "torch", "num_tokens": 64, "hidden_dim": 32, "num_experts": 4,
                        "top_k": 2, "dtype": "bfloat16", "workload": "uniform", "avg_ms": 0.02, "device": "cpu"})]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(rows[0] + "\n")
    second.write_text(rows[1] + "\n")
    (p1,) = asv_store.export_jsonl(first, store, MACHINE, commit=HEAD)
    (p2,) = asv_store.export_jsonl(second, store, MACHINE, commit=HEAD)
    assert p1 == p2
    values = result_values(p1, "exported.CliRecord.track_median_us")
    case = "'T64-H32-E4-k2-bfloat16'"
    assert values[("'pack'", "'torch'", case)] == 10.0  # kept, not clobbered
    assert values[("'combine'", "'torch'", case)] == pytest.approx(20.0)  # avg_ms (the seed's name) in us
    first.write_text(rows[0].replace('"median_us": 10.0', '"median_us": 12.0') + "\n")
    asv_store.export_jsonl(first, store, MACHINE, commit=HEAD)
    assert result_values(p1, "exported.CliRecord.track_median_us")[("'pack'", "'torch'", case)] == 12.0


def test_gpu_records_go_to_a_machine_named_after_the_gpu(tmp_path):
    rec = {"name": "pack", "backend": "triton", "num_tokens": 16384, "hidden_dim": 4096, "num_experts": 128,
           "top_k": 2, "dtype": "bfloat16", "workload": "uniform", "median_us": 180.0, "device": "cuda",
           "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "python": "3.12.3", "git_commit": HEAD + "+dirty"}
    src = tmp_path / "gpu.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    (path,) = asv_store.export_jsonl(src, tmp_path / "asv")
    assert path.parent.name == "nvidia-h100-80gb-hbm3" and path.name == f"{HEAD[:8]}-export-cli-py3.12.json"
    params = json.loads(path.read_text())["params"]
    assert params["gpu"] == "NVIDIA H100 80GB HBM3" and params["torch_version"] == "2.11.0"


def test_pytest_benchmark_export(tmp_path):
    report = {"machine_info": {"python_version": "3.11.7"}, "commit_info": {"id": HEAD},
              "benchmarks": [{"name": "test_stage[pack-torch]", "stats": {"median": 2e-5},
                              "extra_info": {"device": "cpu", "GBps": 3.5}}]}
    src = tmp_path / "pb.json"
    src.write_text(json.dumps(report))
    path = asv_store.export_pytest_benchmark(src, tmp_path / "asv", MACHINE)
    assert result_values(path, "exported.PytestBenchmark.track_median_us")[("'test_stage[pack-torch]'",)] == 20.0
    assert result_values(path, "exported.PytestBenchmark.track_gbps")[("'test_stage[pack-torch]'",)] == 3.5


def test_cli_errors_exit_2(tmp_path, capsys):
    assert asv_store.main(["training", str(tmp_path / "missing.csv")]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert asv_store.main(["training", str(bad), "--results-dir", str(tmp_path)]) == 2
    assert "lacks the column" in capsys.readouterr().err


def _export_worker(args) -> None:
    store, index, n = args
    for i in range(n):
        report = {"machine_info": {"python_version": "3.11.7"}, "commit_info": {"id": HEAD},
                  "benchmarks": [{"name": f"test_w{index}_{i}", "stats": {"median": 1e-6 * (index * 100 + i + 1)},
                                  "extra_info": {}}]}
        src = Path(store).parent / f"w{index}_{i}.json"
        src.write_text(json.dumps(report))
        asv_store.export_pytest_benchmark(src, Path(store), MACHINE)


@pytest.mark.slow
def test_eight_concurrent_exporters_lose_nothing(tmp_path):
    """8 processes export 6 results each into one (machine, commit, env) file and one benchmarks.json:
    the lock around each read-modify-write keeps all 48, and both files agree."""
    import multiprocessing

    store = tmp_path / "asv"
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_export_worker, [(str(store), w, 6) for w in range(8)])
    (path,) = (store / MACHINE).glob("*-export-pytest-*.json")
    values = result_values(path, "exported.PytestBenchmark.track_median_us")
    expected = {(f"'test_w{w}_{i}'",): pytest.approx(w * 100 + i + 1) for w in range(8) for i in range(6)}
    assert {k: v for k, v in values.items() if v is not None} == expected
    registry = json.loads((store / "benchmarks.json").read_text())
    assert len(registry["exported.PytestBenchmark.track_median_us"]["params"][0]) == 48
    assert not [p for p in store.rglob(".*") if p.name != ".lock"]


@pytest.mark.parametrize("bad", ["../..", "..", "a/b", "/etc", ".hidden", "", "a b", "x\n"])
def test_machine_and_environment_names_must_be_one_safe_path_component(tmp_path, bad):
    src = tmp_path / "pb.json"
    src.write_text(json.dumps({"commit_info": {"id": HEAD}, "benchmarks": [{"name": "t", "stats": {"median": 1.0}}]}))
    assert asv_store.main(["pytest-benchmark", str(src), "--machine", bad, "--results-dir", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists() or not [p for p in (tmp_path / "s").rglob("*.json")]
    # an imported results file whose env_name would climb out of the store
    good = tmp_path / "good"
    asv_store.export_pytest_benchmark(src, good, MACHINE)
    (result,) = (good / MACHINE).glob("*-export-*.json")
    data = json.loads(result.read_text())
    data["env_name"] = bad
    result.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="safe path component"):
        asv_store.import_results(good, tmp_path / "target")
    assert not list(tmp_path.glob("target/**/*.json")) and not (tmp_path.parent / "etc").exists()


def test_machine_keys_do_not_change_with_the_kernel_or_ram(monkeypatch):
    """asv copies machine keys into every result's parameters; a key that moved with a kernel update
    or a reboot would split one machine's history into several series."""
    import platform

    first = asv_store.machine_info()
    monkeypatch.setattr(platform, "release", lambda: "9.9.9-other-kernel")
    monkeypatch.setattr(platform, "uname", lambda: platform.uname_result("Linux", "h", "9.9", "#2", "x86_64"))
    monkeypatch.setattr(os, "sysconf", lambda name: 12345)
    assert asv_store.machine_info() == first
    assert first["os"] == platform.system() and first["ram"] == ""
    assert first["machine"] == asv_store.default_machine_name(first["gpu"])
    committed = json.loads((ROOT / "results/asv/cpu-amd-epyc-2c-vm20261126/machine.json").read_text())
    assert committed["os"] == "Linux" and committed["ram"] == ""


def test_register_machine_writes_a_file_asv_reads_without_questions(tmp_path):
    from asv.machine import Machine

    path = tmp_path / "machine.json"
    info = asv_store.register_machine("cpu-test-2c", path)
    asv_store.register_machine("cpu-test-2c", path)  # idempotent
    machine = Machine.load(_path=str(path))  # no name given: asv looks up the host name
    assert machine.machine == "cpu-test-2c" and machine.os == info["os"]


# ------------------------------------------------------------------------------ the dashboard
def _graph_values(html: Path, benchmark: str) -> list[float]:
    values = []
    for graph in html.glob(f"graphs/**/{benchmark}.json"):
        for _, point in json.loads(graph.read_text()):
            values += [v for v in (point if isinstance(point, list) else [point]) if isinstance(v, (int, float))]
    return values



@pytest.mark.slow
def test_dashboard_renders_offline_with_kernel_and_training_graphs(tmp_path):
    from moe_routing_bench.suite import dashboard as pub
    import browser

    helpers.require_dashboard_tools()
    kernel = "bench_pack.Pack.time_pack"
    store_src = ROOT / "results" / "asv"
    runs = sorted(store_src.glob("*/*-virtualenv*.json"), key=lambda p: json.loads(p.read_text())["date"])
    assert runs, "the committed store has no asv suite results"
    commit = json.loads(runs[-1].read_text())["commit_hash"]

    store = tmp_path / "asv"
    shutil.copytree(store_src, store)
    asv_store.export_training_summary(write_summary(tmp_path / "s.csv"), store, "cpu-fixture", commit=commit)
    conf = pub.read_asv_config(ROOT / "asv.conf.json")
    conf.update(repo=str(ROOT), benchmark_dir=str(ROOT / "benchmarks"), results_dir=str(store),
                html_dir=str(tmp_path / "html"), env_dir=str(tmp_path / "env"))
    (tmp_path / "asv.conf.json").write_text(json.dumps(conf))
    try:
        html = pub.publish(tmp_path / "asv.conf.json")  # asv publish + local copies of the CDN libraries
    except pub.VendoringError as e:  # npm present but the registry unreachable, and no cache
        helpers.require(f"the dashboard's npm packages ({e})", False)

    assert _graph_values(html, kernel), "no kernel benchmark values in the published graphs"
    assert 30.0 < max(_graph_values(html, "exported.Training.track_final_val_ppl")) <= 40.0
    with pub.served(html) as url:  # 127.0.0.1 only; Chromium resolves no other host
        # name machine and parameters: the store holds several machines (CPU, H100) and grids, and
        # asv's default view (first value of each parameter) may pick a combination with no data
        views = ((kernel, f"machine={runs[-1].parent.name}"),
                 ("exported.Training.track_final_val_ppl",
                  "machine=cpu-fixture&p-num_experts=8&p-capacity_factor=1.25&p-capacity_factor=None"))
        for page, query in views:
            dom = browser.dump_dom(f"{url}index.html#{page}?{query}", wait_ms=10000)
            assert 'id="main-graph"' in dom and 'class="flot-base"' in dom, f"no graph drawn for {page}"
            ticks = browser.y_ticks(dom)
            assert len(ticks) >= 2 and max(ticks) - min(ticks) > 0.5, f"{page}: empty plot (ticks {ticks})"
            assert "continental origin" not in dom  # asv's error.html, where a library failed to load
