"""DDP on CPU: two gloo processes under torchrun end with identical parameters."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_gloo_ranks_end_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train" / "train.py"), "--distributed", "--device", "cpu", "--dist-backend", "nccl",
           "--num-stories", "300", "--seq-len", "32", "--batch-size", "4", "--layers", "2", "--dim", "32",
           "--heads", "2", "--ffn-mult", "2", "--num-experts", "4", "--router", "aux-free", "--capacity-factor",
           "none", "--dropout", "0.1", "--max-steps", "8", "--eval-interval", "4", "--eval-batches", "3",
           "--lr", "3e-3", "--warmup-steps", "2", "--outdir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    done = rows[-1]
    assert done["done"] and done["world_size"] == 2 and done["step"] == 8
    assert done["param_max_abs_diff_across_ranks"] == 0.0  # the all-reduced aux-free biases too
    assert all(r["world_size"] == 2 for r in rows[:-1])
    for r in rows[:-1]:
        if r["tokens_per_s"]:
            assert r["tokens_per_s_per_rank"] * 2 == pytest.approx(r["tokens_per_s"])
    assert rows[-2]["val_loss"] is not None and rows[-2]["train_loss"] < rows[0]["train_loss"]
    assert proc.stdout.count("step ") >= 2  # one progress line per interval, from rank 0 only
