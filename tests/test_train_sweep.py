"""Sweep: grids (machine-sized default, the seed preset, attribution flips), failure handling and
resume, one owner per sweep folder, stopping ends every child, one-line errors; summary and plots."""
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import loop, plot_curve, plot_frontier, summarize, sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "train" / "sweep.py"
TINY = ["--seq-len", "16", "--batch-per-gpu", "2", "--dim", "16", "--layers", "1", "--heads", "2",
        "--ffn-mult", "2", "--max-steps", "4", "--eval-interval", "2", "--eval-batches", "2", "--warmup-steps", "1",
        "--device", "cpu", "--num-stories", "120", "--dtype", "fp32"]


def test_grid_tags_and_top1_only_at_k1(capsys):
    opts, _ = sweep.parse(["--router-list", "top1,topk-hard,softk,hash,expert-choice,aux-free",
                           "--num-experts-list", "8", "--topk-list", "2", "--capacity-factors", "1.0,1.25",
                           "--seeds", "17,18,19"])
    pts = sweep.grid(opts)
    assert len(pts) == 6 * 2 * 3
    tags = {p.tag for p in pts}
    assert "Rtop1_E8_K1_CF1.25_S18" in tags and "Rtopkhard_E8_K2_CF1.0_S17" in tags
    assert "Rexpertchoice_E8_K2_CF1.25_S19" in tags and "Rauxfree_E8_K2_CF1.0_S17" in tags
    assert all(p.top_k == 1 for p in pts if p.router == "top1")
    assert sweep.main(["--dry-run", "--router-list", "softk,dense", "--num-experts-list", "4", "--topk-list", "1,2",
                       "--capacity-factors", "1.0,none", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 runs") and "Rdense_E4_K2_CFnone_S1" in out and "--capacity-factor none" in out


def test_runs_side_by_side_share_the_cpu_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert sweep.cpu_share_env(8) == {"OMP_NUM_THREADS": "2", "TORCHINDUCTOR_COMPILE_THREADS": "2"}
    assert sweep.cpu_share_env(12)["OMP_NUM_THREADS"] == "1"
    assert sweep.cpu_share_env(40)["OMP_NUM_THREADS"] == "1"
    assert sweep.cpu_share_env(1)["OMP_NUM_THREADS"] == "16"


def test_default_sweep_is_sized_for_the_machine(capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opts, cfg = sweep.parse([])
    assert cfg.preset == "cpu" and len(sweep.grid(opts)) == 3
    assert cfg.model.dim <= 64 and cfg.optim.max_steps <= 300 and cfg.run.batch_size * cfg.model.seq_len <= 1024
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opts, cfg = sweep.parse([])
    assert cfg.preset == "gpu" and len(sweep.grid(opts)) == 6 * 2 * 3 and cfg.optim.compile
    opts, cfg = sweep.parse(["--max-steps", "7", "--seeds", "5"])  # typed flags win over the preset
    assert cfg.optim.max_steps == 7 and {p.seed for p in sweep.grid(opts)} == {5}


def test_seed_preset_grid_and_recipe_flip():
    """The older tool's grid; flipping 'recipe' keeps its token budget but uses this project's recipe."""
    opts, cfg = sweep.parse(["--preset", "seed", "--flip-list", "recipe", "--outdir-root", "runs/x"])
    pts = sweep.grid(opts, cfg.semantics)
    base = [p for p in pts if p.flip is None]
    assert len(base) == 5 * 2 * 3 and {p.router for p in base} == {"top1", "topk-hard", "softk", "hash",
                                                                    "expert-choice"}
    assert len(pts) == 2 * len(base) and all(p.tag.endswith("_no-recipe") for p in pts if p.flip)
    seed_cfg = cfg
    assert "recipe" in seed_cfg.semantics
    assert (seed_cfg.optim.lr, seed_cfg.optim.beta2, seed_cfg.optim.warmup_steps, seed_cfg.optim.decay_all) == \
        (3e-4, 0.999, 50, True)
    assert (seed_cfg.model.attention, seed_cfg.moe.renorm_after_drop, seed_cfg.moe.router_bias) == ("mha", True, True)
    assert seed_cfg.moe.router_init_std == pytest.approx(256 ** -0.5) and seed_cfg.moe.z_loss_beta == 0.0
    _, ours = sweep.parse(["--preset", "seed"], semantics="none")
    assert "recipe" not in ours.semantics
    for c in (seed_cfg, ours):  # the same budget: 1200 steps x 128 x 256 tokens, capacity per 8192 tokens
        assert (c.optim.max_steps, c.run.batch_size, c.model.seq_len, c.moe.capacity_group_tokens) == \
            (1200, 128, 256, 8192)
    assert (ours.optim.beta2, ours.model.attention, ours.moe.router_bias, ours.optim.decay_all) == \
        (0.95, "sdpa", False, False)
    with pytest.raises(Exception, match="not a factor"):
        sweep.grid(sweep.parse(["--flip-list", "recipe"])[0], ())


def test_sweep_records_failure_goes_on_and_resumes(tmp_path, monkeypatch, capsys):
    root = tmp_path / "sw"
    argv = ["--outdir-root", str(root), "--router-list", "softk,hash,expert-choice", "--num-experts-list", "4",
            "--topk-list", "2", "--capacity-factors", "1.0", "--seeds", "1,2", *TINY]
    real_train = loop.train

    def flaky(cfg, on_event=None):
        if cfg.moe.router == "hash":
            raise RuntimeError("boom")
        return real_train(cfg, on_event)

    monkeypatch.setattr(loop, "train", flaky)
    assert sweep.main(argv) == 1
    status = json.loads((root / "sweep_status.json").read_text())
    assert status["Rhash_E4_K2_CF1.0_S1"]["status"] == "failed" and "boom" in status["Rhash_E4_K2_CF1.0_S1"]["error"]
    assert status["Rsoftk_E4_K2_CF1.0_S2"]["status"] == "done"
    assert (root / "summary.csv").exists()
    out = capsys.readouterr().out
    assert "[6/6]" in out and "FAILED" in out
    monkeypatch.setattr(loop, "train", real_train)
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 already finished, 2 to run" in out and "[2/2]" in out
    rows = list(csv.DictReader(open(root / "summary.csv")))
    runs = [r for r in rows if r["row_type"] == "run"]
    means = [r for r in rows if r["row_type"] == "mean"]
    assert len(runs) == 6 and len(means) == 3
    ec = [r for r in means if r["router"] == "expert-choice"][0]
    assert ec["causal_safe"] == "False" and ec["seeds"] == "1;2" and ec["n_seeds"] == "2"
    soft = [r for r in runs if r["router"] == "softk"]
    soft_mean = [r for r in means if r["router"] == "softk"][0]
    vals = [float(r["final_val_ppl"]) for r in soft]
    assert float(soft_mean["final_val_ppl"]) == pytest.approx(statistics.mean(vals))
    assert float(soft_mean["final_val_ppl_std"]) == pytest.approx(statistics.stdev(vals))
    for col in ["median_tokens_per_s", "median_tflops", "mean_drop_rate", "mean_load_cv", "mean_gate_entropy",
                "best_val_ppl", "final_val_loss", "dim", "num_experts", "top_k", "capacity_factor"]:
        assert soft_mean[col] != "", col

    png = tmp_path / "front.png"
    assert plot_frontier.main(["--summary", str(root / "summary.csv"), "--filter-E", "4", "--filter-dim", "16",
                               "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    pts = plot_frontier.load_points(str(root / "summary.csv"), "median_tokens_per_s", "final_val_ppl")
    assert {p["router"]: p["causal_safe"] for p in pts}["expert-choice"] is False
    curve = tmp_path / "curve.png"
    log = root / "Rsoftk_E4_K2_CF1.0_S1" / "train_log.jsonl"
    assert plot_curve.main(["--log", str(log), "--metrics", "train_loss,val_loss,ppl", "--out", str(curve)]) == 0
    assert curve.stat().st_size > 1000


def test_max_runs_runs_a_sweep_in_waves_seed_major(tmp_path, capsys):
    root = tmp_path / "sw"
    argv = ["--outdir-root", str(root), "--router-list", "softk,hash", "--num-experts-list", "4", "--topk-list", "2",
            "--capacity-factors", "1.0", "--seeds", "1,2", "--max-runs", "3", *TINY]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 already finished, 3 to run, 1 left for a rerun" in out and "1 left: rerun the same command" in out
    finished = sorted(d.name for d in root.iterdir() if sweep.run_finished(d, 4))
    # seed-major: both routers' first seed before any second seed
    assert len(finished) == 3 and {"Rsoftk_E4_K2_CF1.0_S1", "Rhash_E4_K2_CF1.0_S1"} <= set(finished)
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 already finished, 1 to run ->" in out and "left" not in out
    assert sweep.main([*argv[:-len(TINY)], "--max-runs", "-1", *TINY]) == 2
    assert "--max-runs must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("placement", [[], ["--subprocess", "--runs-per-gpu", "2"]], ids=["in-process", "subprocess"])
def test_deadline_holds_back_runs_that_would_not_end_in_time_and_a_rerun_continues(tmp_path, capsys, placement):
    root = tmp_path / "sw"
    argv = ["--outdir-root", str(root), "--router-list", "softk,hash", "--num-experts-list", "4", "--topk-list", "2",
            "--capacity-factors", "1.0", "--seeds", "1,2", *placement, *TINY]
    assert sweep.main([*argv, "--deadline-s", "0.001"]) == 0
    out = capsys.readouterr().out
    first_wave = 2 if placement else 1  # every free slot starts before any run has finished
    held = 4 - first_wave
    assert f"{first_wave} ok, 0 failed" in out and f"{held} left ({held} held back by --deadline-s)" in out
    assert sum(sweep.run_finished(d, 4) for d in root.iterdir() if d.is_dir()) == first_wave
    status = json.loads((root / "sweep_status.json").read_text())
    assert sorted(v["status"] for v in status.values()) == ["done"] * first_wave  # held-back runs: no entry
    assert sweep.main(argv) == 0
    assert f"{first_wave} already finished, {held} to run ->" in capsys.readouterr().out
    assert sum(sweep.run_finished(d, 4) for d in root.iterdir() if d.is_dir()) == 4
    assert sweep.main([*argv, "--deadline-s", "-5"]) == 2
    assert "--deadline-s must be a number of seconds > 0" in capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_stopping_the_sweep_ends_its_children_and_a_rerun_finishes(tmp_path):
    root = tmp_path / "sw"
    argv = ["--outdir-root", str(root), "--router-list", "softk", "--num-experts-list", "4", "--topk-list", "2",
            "--capacity-factors", "1.0", "--seeds", "1", "--subprocess", *TINY, "--max-steps", "5000",
            "--eval-interval", "5000"]  # no checkpoint before the end: the rerun starts over
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SWEEP), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    run_dir = root / "Rsoftk_E4_K2_CF1.0_S1"
    lock = run_dir / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    child = int(lock.read_text())
    assert child != proc.pid and _alive(child)
    # a second sweep on the same folder stops at once with one line
    second = _run(argv)
    assert second.returncode == 2 and "sweep folder" in second.stderr and "in use" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "stopping 1 running run" in out
    time.sleep(0.5)
    assert not _alive(child)
    assert json.loads((root / "sweep_status.json").read_text())["Rsoftk_E4_K2_CF1.0_S1"]["status"] == "stopped"
    rerun = _run([*argv, "--max-steps", "6", "--eval-interval", "3"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    records = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert sum(1 for r in records if r.get("done")) == 1 and records[-1]["step"] == 6


def test_missing_data_is_one_line_with_what_to_do(tmp_path):
    r = _run(["--data", str(tmp_path / "nope.txt"), "--outdir-root", str(tmp_path / "sw"), *TINY])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "data file not found" in lines[0] and "export_tinystories.py" in lines[0]
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_missing_data_under_torchrun_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(SWEEP), "--data", str(tmp_path / "nope.txt"), *TINY], capture_output=True, text=True,
                       env=env, timeout=300)
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if "error" in ln.lower()] == [
        ln for ln in r.stderr.splitlines() if ln.startswith("sweep.py: error: data file not found")]
    assert r.stderr.count("sweep.py: error:") == 1


def test_pareto_front():
    pts = [{"x": 1, "y": 5}, {"x": 2, "y": 6}, {"x": 2, "y": 4}, {"x": 3, "y": 7}, {"x": 0.5, "y": 4}]
    assert [(p["x"], p["y"]) for p in plot_frontier.pareto(pts)] == [(2, 4), (3, 7)]


def test_summarize_cli_and_export_unavailable(tmp_path, monkeypatch, capsys):
    from train.config import parse_train_args

    run = tmp_path / "runs" / "Rsoftk_E4_K2_CF1.0_S1"
    loop.train(parse_train_args(
        ["--device", "cpu", "--num-stories", "100", "--seq-len", "16", "--batch-size", "2", "--layers", "1",
         "--dim", "16", "--heads", "2", "--num-experts", "4", "--max-steps", "2", "--eval-interval", "2",
         "--eval-batches", "1", "--outdir", str(run), "--quiet"])[0])
    monkeypatch.setitem(sys.modules, "moe_routing_bench.suite.store", None)
    out = tmp_path / "new" / "dir" / "s.csv"  # --out into a folder that does not exist yet
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(out), "--export-asv"]) == 0
    assert "unavailable" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out)))
    assert [r["row_type"] for r in rows] == ["run", "mean"] and rows[0]["causal_safe"] == "True"
    assert summarize.main(["--runs", str(tmp_path / "none" / "*"), "--out", str(out)]) == 1


def test_attribution_flips_one_factor_for_the_routers_it_changes(capsys):
    import moe_routing_bench as mrb

    argv = ["--preset", "seed", "--seeds", "17", "--capacity-factors", "1.0",
            "--flip-list", "top1_gate,topk_hard_weights,hash_key,expert_choice,balance_loss,recipe"]
    opts, cfg = sweep.parse(argv)
    pts = sweep.grid(opts, cfg.semantics)
    flips = {}
    for p in pts:
        flips.setdefault(p.flip, set()).add(p.router)
    routers = {"top1", "topk-hard", "softk", "hash", "expert-choice"}
    assert flips == {None: routers, "top1_gate": {"top1"}, "topk_hard_weights": {"topk-hard"}, "hash_key": {"hash"},
                     "expert_choice": {"expert-choice"}, "balance_loss": routers - {"hash"}, "recipe": routers}
    assert sweep.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(pts)} runs")
    line = next(ln for ln in out.splitlines() if ln.startswith("Rhash_E8_K2_CF1.0_S17_no-hash_key:"))
    semantics = line.split("--seed-semantics ")[1].split()[0]
    assert [f for f in mrb.SEED_FACTORS if f in semantics.split(",")] == [f for f in mrb.SEED_FACTORS if f != "hash_key"]
    assert "recipe" in semantics and "--beta2 0.999" in line  # the rest of the preset unchanged
    recipe_line = next(ln for ln in out.splitlines() if ln.startswith("Rsoftk_E8_K2_CF1.0_S17_no-recipe:"))
    assert "--beta2 0.95" in recipe_line and "--max-steps 1200" in recipe_line and "--batch-size 128" in recipe_line
