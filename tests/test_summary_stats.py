"""train/summarize.py's statistics over seeds (mean, std, 95% t-interval, Welch's test), the
(a) seed preset vs (b) ours plot, and the export labels, on fake multi-seed runs with chosen values."""
import csv
import json
import math

import pytest

from train import plot_semantics, summarize

T_975_DF2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (tables)

# (router, semantics factors, preset, top_k): final val losses of seeds 1, 2, 3
RUNS = {
    ("softk", (), None, 2): [1.0, 1.1, 1.2],
    ("hash", (), None, 2): [1.05, 1.15, 1.25],  # 0.05 above softk: not distinguishable with 3 seeds
    ("top1", (), None, 1): [2.0, 2.1, 2.2],
    ("softk", ("all",), "seed", 2): [1.5, 1.6, 1.7],
    ("top1", ("all",), "seed", 1): [1.2, 1.3, 1.4],
    ("top1", ("top1_gate", "topk_hard_weights", "hash_key", "expert_choice"), "seed", 1): [1.3, 1.4, 1.5],
}


def _write_run(folder, router, factors, preset, k, seed, loss):
    folder.mkdir(parents=True)
    rec = {"step": 10, "train_loss": loss + 0.1, "val_loss": loss, "tokens_per_s": 1000.0 * seed, "router": router,
           "num_experts": 4, "top_k": k, "capacity_factor": 1.0, "world_size": 1, "dtype": "float32",
           "backend": "torch", "compile": False, "causal_safe": True, "drop_rate": 0.1, "load_cv": 0.2,
           "load_cv_kept": 0.1, "gate_entropy": 1.0, "gate_entropy_selected": 0.5, "mean_combine_weight": 0.9,
           "mean_top1_prob": 0.6, "moe_layers": 2, "bytes_per_token_strict": 384,
           "seed_semantics": list(factors)}
    early = {**rec, "step": 5, "val_loss": loss + 1.0}
    (folder / "train_log.jsonl").write_text(json.dumps(early) + "\n" + json.dumps(rec) + "\n"
                                            + json.dumps({"done": True, "train_time_s": 1.0}) + "\n")
    args = {"seed": seed, "dim": 16, "layers": 2, "heads": 2, "ffn_mult": 2, "seq_len": 8, "batch_size": 2,
            "max_steps": 10, "preset": preset}
    (folder / "hparams.json").write_text(json.dumps({"args": args, "model": {"router": router}}))


@pytest.fixture()
def summary(tmp_path):
    for (router, factors, preset, k), losses in RUNS.items():
        tag = f"{router}_{'+'.join(factors) or 'ours'}"
        for seed, loss in enumerate(losses, 1):
            _write_run(tmp_path / "runs" / f"{tag}_S{seed}", router, factors, preset, k, seed, loss)
    out = tmp_path / "summary.csv"
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(out)]) == 0
    return out


def _means(path):
    return {(r["router"], r["semantics"]): r for r in csv.DictReader(open(path)) if r["row_type"] == "mean"}


def test_mean_std_interval_and_labels(summary):
    m = _means(summary)
    assert set(m) == {("softk", "ours"), ("hash", "ours"), ("top1", "ours"), ("softk", "seed"), ("top1", "seed"),
                      ("top1", "seed (ours: balance_loss)")}
    softk = m[("softk", "ours")]
    assert float(softk["final_val_loss"]) == pytest.approx(1.1)
    assert float(softk["final_val_loss_std"]) == pytest.approx(0.1)
    assert float(softk["final_val_loss_ci95"]) == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert float(softk["final_val_ppl"]) == pytest.approx((math.exp(1.0) + math.exp(1.1) + math.exp(1.2)) / 3)
    assert float(softk["best_val_loss"]) == pytest.approx(1.1)  # the later evaluation is the better one
    assert softk["n_seeds"] == "3" and softk["seeds"] == "1;2;3"
    assert m[("softk", "seed")]["recipe"] == "seed" and softk["recipe"] == "ours"
    assert m[("softk", "seed")]["seed_semantics"] == "top1_gate+topk_hard_weights+hash_key+expert_choice+balance_loss"
    assert float(softk["mean_load_cv_kept"]) == pytest.approx(0.1) and float(softk["mean_top1_prob"]) == 0.6
    assert softk["moe_layers"] == "2" and softk["bytes_per_token_strict"] == "384"


def test_routers_ranked_and_ties_by_welch(summary):
    m = _means(summary)
    assert [m[(r, "ours")]["rank"] for r in ("softk", "hash", "top1")] == ["1", "2", "3"]
    assert m[("softk", "ours")]["tied_with"] == "hash" and m[("hash", "ours")]["tied_with"] == "softk"
    assert m[("top1", "ours")]["tied_with"] == ""
    pairs = list(csv.DictReader(open(summarize.pairs_path(summary))))
    sh = next(p for p in pairs if p["kind"] == "routers" and {p["a"], p["b"]} == {"softk", "hash"})
    # t = -0.05 / sqrt(2 * 0.01 / 3) = -0.612, df = 4 (equal variances), two-sided p = 0.573
    assert float(sh["welch_t"]) == pytest.approx(-0.05 / math.sqrt(2 * 0.01 / 3))
    assert float(sh["welch_df"]) == pytest.approx(4.0)
    assert float(sh["welch_p"]) == pytest.approx(0.5734, abs=1e-3)
    assert sh["distinguishable"] == "False" and sh["intervals_overlap"] == "True" and sh["semantics"] == "ours"
    st = next(p for p in pairs if p["kind"] == "routers" and {p["a"], p["b"]} == {"softk", "top1"}
              and p["semantics"] == "ours")
    assert st["distinguishable"] == "True" and float(st["welch_p"]) < 1e-3 and st["intervals_overlap"] == "False"
    # the seed preset vs ours, per router
    sem = next(p for p in pairs if p["kind"] == "semantics (softk)")
    assert (sem["a"], sem["b"]) == ("seed/seed", "ours/ours") and sem["distinguishable"] == "True"
    assert float(sem["diff"]) == pytest.approx(0.5)


def test_welch_edge_cases():
    assert summarize.welch([1.0], [2.0, 3.0]) == (None, None, None)
    assert summarize.welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0
    assert summarize.welch([1.0, 1.0], [2.0, 2.0])[2] == 0.0
    assert summarize.ci95_halfwidth([3.0]) is None


def test_seed_vs_ours_plot_written(summary, tmp_path):
    png = tmp_path / "ab.png"
    assert plot_semantics.main(["--summary", str(summary), "--a", "semantics=seed", "--b", "semantics=ours",
                                "--out", str(png), "--metric", "final_val_loss"]) == 0
    assert png.stat().st_size > 5000
    table = plot_semantics.plot(str(summary), {"semantics": "seed"}, {"semantics": "ours"}, str(png),
                                "final_val_loss", err="ci95")
    softk = next(r for r in table if r["router"] == "softk")
    assert softk["mean_a"] == pytest.approx(1.6) and softk["mean_b"] == pytest.approx(1.1)
    assert softk["err_a"] == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert "mean_a" not in next(r for r in table if r["router"] == "hash")  # no seed-preset hash runs
    assert plot_semantics.main(["--summary", str(summary), "--a", "semantics=nothing", "--b", "semantics=none",
                                "--out", str(png)]) == 2
    with pytest.raises(ValueError):
        plot_semantics.parse_selection("semantics")


def test_one_seed_has_no_spread(tmp_path, capsys):
    """A configuration with one seed gets no std (not 0: nothing says it would not vary) and no error bar."""
    _write_run(tmp_path / "runs" / "softk_S1", "softk", (), None, 2, 1, 1.0)
    _write_run(tmp_path / "runs" / "softk_seed_S1", "softk", ("all",), "seed", 2, 1, 1.4)
    out = tmp_path / "one.csv"
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(out), "--markdown",
                           str(tmp_path / "one.md")]) == 0
    assert _means(out)[("softk", "ours")]["final_val_loss_std"] == ""
    assert "| 1 | 2.718 ± - |" in (tmp_path / "one.md").read_text()
    capsys.readouterr()
    assert plot_semantics.main(["--summary", str(out), "--out", str(tmp_path / "one.png"), "--metric",
                                "final_val_loss"]) == 0
    assert "a 1.4000 (1 seed)  b 1.0000 (1 seed)" in capsys.readouterr().out


def test_export_labels_keep_experiments_apart(summary, tmp_path):
    rows = [r for r in csv.DictReader(open(summary))]
    labels = {(x["router"].split(" [")[0], x["semantics"]): x["router"] for x in summarize.export_rows(rows)}
    assert labels[("softk", "ours")] == "softk"  # ours keeps its plain name (and dashboard history)
    assert labels[("softk", "seed")] == "softk [seed, recipe seed]"
    assert labels[("top1", "seed (ours: balance_loss)")] == "top1 [seed (ours: balance_loss), recipe seed]"
    # the recipe flipped back to ours is named beside the older tool's semantics, and one router is
    # labelled the same way at every capacity factor
    flipped = [{**r, "recipe": "ours", "run": r["run"] + "x"} for r in rows
               if r["router"] == "softk" and r["semantics"] == "seed"]
    other_cf = [{**r, "capacity_factor": "1.25"} for r in rows if r["router"] == "softk"]  # no recipe flip here
    names = {(x["capacity_factor"], x["router"]) for x in summarize.export_rows(rows + flipped + other_cf)}
    assert {("1.0", "softk [seed, recipe ours]"), ("1.0", "softk [seed, recipe seed]"), ("1.0", "softk"),
            ("1.25", "softk [seed, recipe seed]"), ("1.25", "softk")} <= names
    store = pytest.importorskip("moe_routing_bench.suite.store")
    path = summarize.export(summary, summarize.summarize([str(tmp_path / "runs" / "*")], summary), tmp_path / "asv",
                            "test-machine")
    text = path.read_text()
    assert "softk [seed, recipe seed]" in text and "exported.Training.track_final_val_loss_ci95" in text
    assert store is not None and not list(tmp_path.glob("*.tmp.csv"))
    # throughput of runs that shared a GPU stays in the CSV (with gpu_shared_by_runs) but not in the store
    shared = [{**r, "gpu_shared_by_runs": "8"} for r in rows]
    assert all(x["median_tokens_per_s"] in (None, "") for x in summarize.export_rows(shared) if x["row_type"] == "run")
    assert all(x["median_tokens_per_s"] for x in summarize.export_rows(rows) if x["row_type"] == "run")
    # a one-off study goes into a group of its own, never into the documented sweep's history
    study = json.loads(summarize.export(summary, summarize.summarize([str(tmp_path / "runs" / "*")], summary),
                                        tmp_path / "asv", "test-machine", group="RouterStudy").read_text())
    assert "exported.RouterStudy.track_final_val_loss" in study["results"]
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(summary), "--export-asv",
                           "--results-dir", str(tmp_path / "asv"), "--export-group", "Router Study"]) == 2


def test_frontier_select_and_per_layer_curves(summary, tmp_path):
    from train import plot_curve, plot_frontier

    pts = plot_frontier.load_points(str(summary), "median_tokens_per_s", "final_val_ppl", select={"semantics": "ours"})
    assert sorted(p["router"] for p in pts) == ["hash", "softk", "top1"]
    png = tmp_path / "front.png"
    assert plot_frontier.main(["--summary", str(summary), "--select", "semantics=seed", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "load_cv_kept_per_layer": [0.1 * s, 0.2 * s], "load_cv_kept": 0.15 * s})
                             for s in (1, 2, 3)) + "\n")
    curve = tmp_path / "curve.png"
    assert plot_curve.main(["--log", str(log), "--metrics", "load_cv_kept,load_cv_kept_per_layer", "--out", str(curve)]) == 0
    assert curve.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # atomic: no temp left


def test_curve_of_a_missing_log_is_one_usage_error(tmp_path, capsys):
    from train import plot_curve

    with pytest.raises(SystemExit) as e:
        plot_curve.main(["--log", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c.png")])
    assert e.value.code == 2 and "no training log at" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_markdown_table(summary, tmp_path):
    md = tmp_path / "table.md"
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(summary), "--markdown", str(md)]) == 0
    lines = md.read_text().splitlines()
    assert len(lines) == 2 + 6 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2].startswith("| seed | seed | 10 | top1 |")  # the seed preset first, best first
    softk = next(line for line in lines if line.startswith("| ours | ours | 10 | softk |"))
    assert "| hash |" in softk and "3.014 ± 0.301" in softk


def test_attribution_table(summary, tmp_path):
    md = tmp_path / "attr.md"
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(summary), "--attribution", str(md)]) == 0
    lines = md.read_text().splitlines()
    top1 = [line for line in lines if line.startswith("| top1 |")]
    assert top1[0].startswith("| top1 | 1.0 | 10 | seed/seed | (none: the preset) | 1.3000 ± 0.1000 | - |")
    # balance loss flipped back to ours: +0.1, t = 0.1 / sqrt(2 * 0.01 / 3), df 4
    flip = next(line for line in top1 if "seed (ours: balance_loss)/seed" in line)
    assert "| balance_loss |" in flip and "| +0.1000 |" in flip and "| no |" in flip
    ours = next(line for line in top1 if "| ours/ours |" in line)
    assert "| top1_gate, balance_loss, recipe |" in ours  # the factors that matter to top1
    assert "| +0.8000 |" in ours and "| yes |" in ours
    # the single flips measured so far add up to +0.1 of the +0.8 between the preset and ours
    total = next(line for line in top1 if "| sum of single flips |" in line)
    assert "| balance_loss (1 of 3) |" in total and "| +0.1000 |" in total
    assert not any(line.startswith("| hash |") for line in lines)  # no seed preset for hash: nothing to attribute


def test_labelled_runs_are_a_variant_compared_with_the_unlabelled(summary, tmp_path):
    for seed, loss in enumerate([0.5, 0.6, 0.7], 1):  # softk, ours, with something changed: 0.5 lower
        _write_run(tmp_path / "parts" / "fast" / f"softk_S{seed}", "softk", (), None, 2, seed, loss)
    md = tmp_path / "variants.md"
    assert summarize.main(["--runs", str(tmp_path / "runs" / "*"), f"fast={tmp_path / 'parts' / 'fast' / '*'}",
                           "--out", str(summary), "--variants", str(md)]) == 0
    means = [r for r in csv.DictReader(open(summary)) if r["row_type"] == "mean" and r["router"] == "softk"
             and r["semantics"] == "ours"]
    assert sorted((r["variant"], round(float(r["final_val_loss"]), 6)) for r in means) == [("", 1.1), ("fast", 0.6)]
    lines = md.read_text().splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[2].count("|")
    # -0.5, t = 0.5 / sqrt(2 * 0.01 / 3), df 4
    _, _, p = summarize.welch([0.5, 0.6, 0.7], [1.0, 1.1, 1.2])
    assert p == pytest.approx(0.0036, abs=2e-4)
    assert lines[2] == (f"| softk | 1.0 | 10 | ours/ours | fast | 0.6000 ± 0.1000 | 1.1000 ± 0.1000 | -0.5000 | "
                        f"{p:.3g} | yes |")
    labels = {x["router"] for x in summarize.export_rows(list(csv.DictReader(open(summary))))}
    assert {"softk", "softk [variant=fast]"} <= labels  # the unlabelled runs keep their plain name
    assert summarize.split_variant("runs/a=b/*") == ("", "runs/a=b/*")  # '=' inside a path is not a label


def test_replace_drops_a_study_s_earlier_exports(summary, tmp_path):
    pytest.importorskip("moe_routing_bench.suite.store")
    from moe_routing_bench.suite.store import resolve_commit

    store, runs = tmp_path / "asv", str(tmp_path / "runs" / "*")
    old, new = resolve_commit("HEAD~1")[0], resolve_commit("HEAD")[0]
    base = ["--out", str(summary), "--export-asv", "--results-dir", str(store), "--machine", "m"]
    assert summarize.main(["--runs", runs, *base, "--export-group", "Study", "--commit", old]) == 0
    assert summarize.main(["--runs", runs, *base, "--commit", old]) == 0  # Training, same file as the study
    seed_only = str(tmp_path / "runs" / "*_all_S*")  # the study again, fewer labels, at a newer commit
    assert summarize.main(["--runs", seed_only, *base, "--export-group", "Study", "--commit", new, "--replace"]) == 0
    registry = json.loads((store / "benchmarks.json").read_text())
    labels = registry["exported.Study.track_final_val_loss"]["params"][0]
    assert "'softk'" not in labels and "'softk [seed, recipe seed]'" in labels  # only the current labels
    files = {p.name[:8]: json.loads(p.read_text())["results"] for p in (store / "m").glob("*-export-*.json")}
    assert not any(k.startswith("exported.Study.") for k in files[old[:8]])  # gone from the older commit
    assert "exported.Training.track_final_val_loss" in files[old[:8]]  # the other group kept
    assert "exported.Study.track_final_val_loss" in files[new[:8]]
    with pytest.raises(SystemExit) as e:  # never the documented sweep's history
        summarize.main(["--runs", runs, *base, "--replace"])
    assert e.value.code == 2
