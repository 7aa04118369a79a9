"""Training configuration: flags generated once from the dataclasses and shared by every script,
presets, the older tool's semantics, and --help with a description and defaults everywhere."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import moe_routing_bench as mrb
from train import bench_throughput, sweep
from train import config as C
from train.trainer import model_config

ROOT = Path(__file__).resolve().parents[1]


def _dests(parser):
    return {a.dest for a in parser._actions}


def test_every_field_is_a_flag_of_every_script():
    train_fields = {f.name for name in C.TRAIN_SECTIONS for f in dataclasses.fields(C.SECTIONS[name])}
    assert train_fields <= _dests(C.train_parser("x"))
    assert train_fields - sweep.PER_POINT <= _dests(sweep.build_parser())
    assert not (sweep.PER_POINT & _dests(sweep.build_parser()))  # the grid sets those per run
    assert train_fields <= _dests(bench_throughput.build_parser())
    sweep_flags = {f.name for f in dataclasses.fields(sweep.SweepOptions)}
    assert sweep_flags <= _dests(sweep.build_parser())
    for f in dataclasses.fields(C.MoEOptions):  # one source of help text and default per field
        assert f.metadata["help"], f.name


def test_to_argv_rebuilds_the_config_exactly():
    for argv in ([], ["--preset", "seed", "--router", "top1", "--no-decay-all", "--capacity-group-tokens", "none"],
                 ["--capacity-factor", "none", "--router", "expert_choice", "--tie-head", "--data", "x.txt"]):
        cfg, _ = C.parse_train_args(argv)
        again, _ = C.parse_train_args(C.to_argv(cfg))
        assert C.to_argv(again) == C.to_argv(cfg)
        for name in C.TRAIN_SECTIONS:
            assert getattr(again, name) == getattr(cfg, name), name
    cfg, _ = C.parse_train_args(["--preset", "seed", "--no-decay-all", "--capacity-group-tokens", "none"])
    assert cfg.optim.decay_all is False and cfg.moe.capacity_group_tokens is None  # typed flags win


def test_seed_preset_is_the_older_tools_recipe():
    cfg, _ = C.parse_train_args(["--preset", "seed", "--router", "top1"])
    assert cfg.preset == "seed" and "recipe" in cfg.semantics
    assert set(cfg.routing_semantics) == set(C.seed_factors())
    got = {**vars(cfg.model), **vars(cfg.moe), **vars(cfg.optim), **vars(cfg.run)}
    for key, value in C.RECIPE.items():
        assert got[key] == (1 if key == "top_k" else value), key  # top1 runs at k=1
    mc = model_config(cfg)
    assert (mc.attention, mc.renorm_after_drop, mc.capacity_group_tokens, mc.router_bias) == ("mha", True, 8192, True)
    assert mc.router_init_std == pytest.approx(1 / 16)
    plain, _ = C.parse_train_args([])
    assert plain.semantics == () and plain.optim.beta2 == 0.95 and plain.model.attention == "sdpa"


def test_seed_semantics_resolution():
    known = C.seed_factors()
    assert C.resolve_semantics("none") == ()
    assert C.resolve_semantics("all") == (*known, "recipe")
    assert C.resolve_semantics("all,-recipe") == known
    assert C.resolve_semantics("recipe") == ("recipe",)
    with pytest.raises(mrb.ConfigError, match="unknown factor 'bogus'"):
        C.resolve_semantics("all,bogus")
    cfg, _ = C.parse_train_args(["--seed-semantics", "recipe", "--seed", "3"])  # --seed is not --seed-semantics
    assert cfg.optim.seed == 3 and cfg.optim.lr == 3e-4 and cfg.optim.beta2 == 0.999


def test_bad_combinations_are_config_errors():
    with pytest.raises(mrb.ConfigError, match="must divide"):
        C.parse_train_args(["--capacity-group-tokens", "1000", "--batch-size", "4", "--seq-len", "256"])
    with pytest.raises(mrb.ConfigError, match="multiple of --heads"):
        C.parse_train_args(["--dim", "30", "--heads", "4"])
    with pytest.raises(mrb.ConfigError, match="unknown"):
        C.parse_train_args(["--preset", "nope"])


def test_seed_fields_reach_the_moe_layer():
    from train import model as M

    cfg = M.ModelConfig(seq_len=8, layers=1, dim=16, heads=2, seed_semantics=("top1_gate",), router_bias=True,
                        router_init_std=0.25)
    layer = M.MoETransformer(cfg).blocks[0].ffn
    assert layer.config.seed_semantics == ("top1_gate",) and layer.router.bias is not None
    assert layer.config.router_init_std == 0.25
    assert M.moe_config(M.ModelConfig(seq_len=8, layers=1, dim=16, heads=2)).seed_semantics == ()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "sweep.py", "bench_throughput.py", "export_tinystories.py"])
def test_help_has_a_description_and_defaults(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "train" / script), "--help"], capture_output=True, text=True,
                       env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == ""
    head = r.stdout.split("\n\n")[1]  # the description after the usage
    assert len(head.split()) >= 4, head
    if script in ("train.py", "sweep.py", "bench_throughput.py"):
        text = " ".join(r.stdout.split())
        assert "runs/ is git-ignored" in text and "(default: runs/" in text
        for phrase in ["level only (256 ids", "unused", "only 'linear'", "'none' = dropless", "--preset",
                       "(default: 0.01)", "--batch-per-gpu"]:
            assert phrase in text, (script, phrase)
        assert script == "sweep.py" or "torch_soft" in text  # sweep: the grid sets --router
