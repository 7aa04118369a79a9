"""The older tool's recipe (--preset seed) trains end to end: on CPU at a tiny size, on a GPU (when
present) at its real size, compiled, for a few steps."""
import json

import pytest
import torch

import moe_routing_bench as mrb
from train import loop
from train.config import parse_train_args

def _train(tmp_path, *argv):
    cfg, _ = parse_train_args(["--preset", "seed", "--outdir", str(tmp_path / "run"), "--quiet", *argv])
    return loop.train(cfg), cfg


@pytest.mark.parametrize("router", ["top1", "expert-choice"])
def test_seed_preset_trains_on_cpu_at_a_tiny_size(tmp_path, router):
    done, cfg = _train(tmp_path, "--router", router, "--capacity-factor", "1.0", "--device", "cpu", "--dim", "32",
                       "--heads", "2", "--seq-len", "16", "--batch-size", "8", "--capacity-group-tokens", "32",
                       "--max-steps", "4", "--eval-interval", "4", "--num-stories", "15")  # every window: a short last batch
    assert cfg.moe.capacity_group_tokens == 32 and cfg.optim.beta2 == 0.999 and cfg.model.attention == "mha"
    assert done["step"] == 4 and done["best_val_loss"] <= done["final_val_loss"]
    hp = json.loads((tmp_path / "run" / "hparams.json").read_text())
    assert hp["capacity_group_tokens"] == 32 and hp["capacity_per_expert"] == mrb.capacity(
        32, 1 if router == "top1" else 2, 8, 1.0)
    assert "recipe" in hp["args"]["semantics"] and hp["args"]["preset"] == "seed"
    assert hp["model"]["seed_semantics"] == list(mrb.SEED_FACTORS) and hp["model"]["router_bias"] is True
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["seed_semantics"] == list(mrb.SEED_FACTORS) and rows[0]["preset"] == "seed"
    assert len(rows[0]["load_cv_kept_per_layer"]) == 2 and rows[0]["moe_layers"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("router", ["softk", "expert-choice"])
def test_seed_preset_compiles_and_trains_on_the_gpu(tmp_path, router):
    """The issue-14 recipe at its real size (128 x 256 tokens, groups of 8192), compiled, 20 steps."""
    done, cfg = _train(tmp_path, "--router", router, "--capacity-factor", "1.25", "--device", "cuda", "--compile",
                       "--max-steps", "20", "--eval-interval", "10")
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert done["step"] == 20 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows[:-1])
    assert rows[-2]["tokens_per_s"] > 0 and rows[-2]["dtype"] == "bfloat16"
    print(f"{router}: {rows[-2]['tokens_per_s']:,.0f} tokens/s, peak {rows[-2]['peak_mem_GiB']:.1f} GiB")
