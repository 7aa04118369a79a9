"""Sweep grid, failure handling and resume, summary CSV (mean/std over seeds), frontier and curve plots."""
import csv
import json
import statistics
import sys

import pytest

from train import plot_curve, plot_frontier, summarize, sweep
from train import train as T

TINY = ["--seq-len", "16", "--batch-per-gpu", "2", "--dim", "16", "--layers", "1", "--heads", "2",
        "--ffn-mult", "2", "--max-steps", "4", "--eval-interval", "2", "--eval-batches", "2", "--warmup-steps", "1",
        "--device", "cpu", "--train-args", "--num-stories 120"]


def test_grid_tags_and_top1_only_at_k1(capsys):
    args = sweep.build_parser().parse_args(
        ["--router-list", "top1,topk-hard,softk,hash,expert-choice,aux-free", "--num-experts-list", "8",
         "--topk-list", "2", "--capacity-factors", "1.0,1.25", "--seeds", "17,18,19"])
    pts = sweep.grid(args)
    assert len(pts) == 6 * 2 * 3
    tags = {p.tag for p in pts}
    assert "Rtop1_E8_K1_CF1.25_S18" in tags and "Rtopkhard_E8_K2_CF1.0_S17" in tags
    assert "Rexpertchoice_E8_K2_CF1.25_S19" in tags and "Rauxfree_E8_K2_CF1.0_S17" in tags
    assert all(p.top_k == 1 for p in pts if p.router == "top1")
    seed_default = sweep.grid(sweep.build_parser().parse_args([]))
    assert len(seed_default) == 126  # the seed's default grid: top1 once per E, cf, seed
    assert sweep.main(["--dry-run", "--router-list", "softk,dense", "--num-experts-list", "4", "--topk-list", "1,2",
                       "--capacity-factors", "1.0,none", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 runs") and "Rdense_E4_K2_CFnone_S1" in out and "--capacity-factor none" in out


def test_sweep_records_failure_goes_on_and_resumes(tmp_path, monkeypatch, capsys):
    root = tmp_path / "sw"
    argv = ["--outdir-root", str(root), "--router-list", "softk,hash,expert-choice", "--num-experts-list", "4",
            "--topk-list", "2", "--capacity-factors", "1.0", "--seeds", "1,2", *TINY]
    real_train = T.train

    def flaky(args, hooks=None):
        if args.router == "hash":
            raise RuntimeError("boom")
        return real_train(args, hooks)

    monkeypatch.setattr(T, "train", flaky)
    assert sweep.main(argv) == 1
    status = json.loads((root / "sweep_status.json").read_text())
    assert status["Rhash_E4_K2_CF1.0_S1"]["status"] == "failed" and "boom" in status["Rhash_E4_K2_CF1.0_S1"]["error"]
    assert status["Rsoftk_E4_K2_CF1.0_S2"]["status"] == "done"
    assert (root / "summary.csv").exists()
    out = capsys.readouterr().out
    assert "[6/6]" in out and "FAILED" in out
    monkeypatch.setattr(T, "train", real_train)
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

    # frontier: expert-choice hollow and off the frontier; curves from a log
    png = tmp_path / "front.png"
    assert plot_frontier.main(["--summary", str(root / "summary.csv"), "--filter-E", "4", "--filter-dim", "16",
                               "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    pts = plot_frontier.load_points(str(root / "summary.csv"), "median_tokens_per_s", "final_val_ppl")
    assert {p["router"]: p["causal_safe"] for p in pts}["expert-choice"] is False
    assert all(p["causal_safe"] for p in plot_frontier.pareto([p for p in pts if p["causal_safe"]]))
    curve = tmp_path / "curve.png"
    log = root / "Rsoftk_E4_K2_CF1.0_S1" / "train_log.jsonl"
    assert plot_curve.main(["--log", str(log), "--metrics", "train_loss,val_loss,ppl", "--out", str(curve)]) == 0
    assert curve.stat().st_size > 1000


def test_pareto_front():
    pts = [{"x": 1, "y": 5}, {"x": 2, "y": 6}, {"x": 2, "y": 4}, {"x": 3, "y": 7}, {"x": 0.5, "y": 4}]
    assert [(p["x"], p["y"]) for p in plot_frontier.pareto(pts)] == [(2, 4), (3, 7)]


def test_summarize_cli_and_export_unavailable(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "Rsoftk_E4_K2_CF1.0_S1"
    T.train(T.normalize_args(T.build_parser().parse_args(
        ["--device", "cpu", "--num-stories", "100", "--seq-len", "16", "--batch-size", "2", "--layers", "1",
         "--dim", "16", "--heads", "2", "--num-experts", "4", "--max-steps", "2", "--eval-interval", "2",
         "--eval-batches", "1", "--outdir", str(run), "--quiet"]))[0])
    monkeypatch.setitem(sys.modules, "moe_routing_bench.suite.store", None)
    out = tmp_path / "new" / "dir" / "s.csv"  # --out into a folder that does not exist yet
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(out), "--export-asv"]) == 0
    assert "unavailable" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out)))
    assert [r["row_type"] for r in rows] == ["run", "mean"] and rows[0]["causal_safe"] == "True"
    assert summarize.main(["--runs", str(tmp_path / "none" / "*"), "--out", str(out)]) == 1
