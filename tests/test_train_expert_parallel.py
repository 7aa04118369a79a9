"""train.py --expert-parallel on CPU: two gloo ranks (torch.multiprocessing) train like plain DDP and
like one process with the same global batch; checkpoints hold the unsharded model, so a killed EP2
run resumes at EP2 or EP1 as if never stopped; bad sizes are one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Crash, crash_at, free_port

from train import loop
from train import sweep
from train import train as T
from train.config import parse_train_args, to_argv
from train.trainer import Trainer, setup_distributed

STEPS, CKPT_AT, CRASH_AT = 8, 4, 6
# 2 ranks x 4 sequences x 32 tokens, capacity 1.0 (drops happen), grad clipping on (the EP clip)
COMMON = ["--device", "cpu", "--num-stories", "300", "--seq-len", "32", "--layers", "2", "--dim", "32",
          "--heads", "2", "--ffn-mult", "2", "--num-experts", "4", "--top-k", "2", "--router", "softk",
          "--capacity-factor", "1.0", "--lr", "3e-3", "--warmup-steps", "2", "--dropout", "0.0",
          "--grad-clip", "0.5", "--eval-batches", "3", "--max-steps", str(STEPS), "--eval-interval", "4",
          "--log-interval", "1", "--ckpt-interval", str(CKPT_AT), "--quiet"]
# float32 sums in another order (DDP buckets vs all-to-all + per-group reduce) over 8 steps
TOL_DDP = dict(rel=1e-6, abs=1e-6)  # measured: 9.4e-8 (train), 3.2e-8 (val)
TOL_ONE_PROCESS = dict(rel=1e-5, abs=1e-5)  # measured 9.4e-8; plus one process's capacity groups and aux-loss averaging
TOL_RESUME = dict(rel=1e-7, abs=1e-7)  # measured: identical


def cfg_for(root: Path, name: str, *extra: str):
    return parse_train_args([*COMMON, "--outdir", str(root / name), *extra])[0]


def two_ranks(root: Path, name: str, ep: int):
    return cfg_for(root, name, "--distributed", "--batch-size", "4", "--expert-parallel", str(ep))


def _worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    root = Path(root)
    try:
        loop.train(two_ranks(root, "ddp2", 1))
        loop.train(two_ranks(root, "ep2", 2))
        for name, resume_ep in (("ep2_ep2", 2), ("ep2_ep1", 1)):
            try:
                loop.train(two_ranks(root, name, 2), on_event=crash_at(CRASH_AT))
            except Crash:
                pass
            loop.train(two_ranks(root, name, resume_ep))
        # the sharding really happened: each rank holds 2 of the 4 experts
        t = Trainer(two_ranks(root, "probe", 2), setup_distributed("cpu", True))
        shapes = [tuple(m.w1_EHF.shape) for m in t.model.moe_layers()]
        (root / f"probe{rank}.json").write_text(json.dumps({"shapes": shapes, "types": [
            type(m).__name__ for m in t.model.moe_layers()]}))
        if rank == 0:  # one process, the same global batch, capacity per 4 x 32 tokens as per rank
            loop.train(cfg_for(root, "one", "--batch-size", "8", "--capacity-group-tokens", "128"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep_train")
    mp.spawn(_worker, args=(2, free_port(), str(root)), nprocs=2, join=True)
    return root


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def losses(rows, key="train_loss"):
    return [r[key] for r in rows if not r.get("done") and r[key] is not None]


def test_ep_shards_the_experts(runs):
    for rank in (0, 1):
        probe = json.loads((runs / f"probe{rank}.json").read_text())
        assert probe["types"] == ["ExpertParallelMoELayer"] * 2 and all(s[0] == 2 for s in probe["shapes"])
    hp = json.loads((runs / "ep2" / "hparams.json").read_text())
    ddp = json.loads((runs / "ddp2" / "hparams.json").read_text())
    assert hp["args"]["expert_parallel"] == 2 and hp["world_size"] == 2
    assert hp["params_total"] == ddp["params_total"] and hp["flops_per_token"] == ddp["flops_per_token"]
    assert all(r["expert_parallel"] == 2 for r in read_log(runs / "ep2")[:-1])


def test_ep2_trains_like_ddp2(runs):
    ddp, ep = read_log(runs / "ddp2"), read_log(runs / "ep2")
    assert [r.get("step") for r in ep] == [r.get("step") for r in ddp] == [*range(1, STEPS + 1), STEPS]
    assert losses(ep) == pytest.approx(losses(ddp), **TOL_DDP)
    assert [r["grad_norm"] for r in ep[:-1]] == pytest.approx([r["grad_norm"] for r in ddp[:-1]], **TOL_DDP)
    assert [r["drop_rate"] for r in ep[:-1]] == pytest.approx([r["drop_rate"] for r in ddp[:-1]], **TOL_DDP)
    assert any(r["drop_rate"] > 0 for r in ep[:-1])  # capacity per rank is exercised
    assert ep[-1]["final_val_loss"] == pytest.approx(ddp[-1]["final_val_loss"], **TOL_DDP)
    assert ep[-1]["param_max_abs_diff_across_ranks"] == 0.0 == ddp[-1]["param_max_abs_diff_across_ranks"]
    assert losses(ep)[-1] < losses(ep)[0]
    a = torch.load(runs / "ddp2" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(runs / "ep2" / "ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:  # the EP checkpoint holds the unsharded model
        assert b[k].shape == a[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_ep2_trains_like_one_process_with_the_global_batch(runs):
    one, ep = read_log(runs / "one"), read_log(runs / "ep2")
    assert losses(ep) == pytest.approx(losses(one), **TOL_ONE_PROCESS)


@pytest.mark.parametrize("name", ["ep2_ep2", "ep2_ep1"])
def test_killed_ep2_run_resumes_like_the_uninterrupted_one(runs, name):
    full, resumed = read_log(runs / "ep2"), read_log(runs / name)
    assert [r.get("step") for r in resumed] == [r.get("step") for r in full]
    hp = json.loads((runs / name / "hparams.json").read_text())
    assert hp["resumed_from_step"] == CKPT_AT and hp["args"]["expert_parallel"] == (2 if name == "ep2_ep2" else 1)
    tol = TOL_RESUME if name == "ep2_ep2" else TOL_DDP  # EP1 resumes as plain DDP: another summation order
    assert losses(resumed) == pytest.approx(losses(full), **tol)
    assert losses(resumed, "val_loss") == pytest.approx(losses(full, "val_loss"), **tol)
    assert resumed[-1]["final_val_loss"] == pytest.approx(full[-1]["final_val_loss"], **tol)
    # the Adam moments came back too (else the steps after the resume would differ)
    a = torch.load(runs / "ep2" / "ckpt.pt", weights_only=True)["optimizer"]["state"]
    b = torch.load(runs / name / "ckpt.pt", weights_only=True)["optimizer"]["state"]
    for i in a:
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b[i][k], a[i][k], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("flags, message", [
    (["--num-experts", "4", "--expert-parallel", "3"], "--expert-parallel 3: --num-experts 4 is not a multiple of it"),
    (["--num-experts", "4", "--expert-parallel", "2"], "--expert-parallel 2: world size 1 is not a multiple of it"),
    (["--expert-parallel", "0"], "--expert-parallel must be >= 1"),
    (["--router", "dense", "--expert-parallel", "2"], "dense baseline has no experts"),
])
def test_bad_expert_parallel_is_one_line_exit_2(flags, message, tmp_path, capsys):
    argv = ["--device", "cpu", "--num-stories", "50", "--seq-len", "16", "--dim", "16", "--heads", "2",
            "--max-steps", "1", "--outdir", str(tmp_path / "bad"), "--quiet", *flags]
    assert T.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and message in err[0], err


def test_flag_is_in_help_and_reaches_sweep_children(capsys):
    with pytest.raises(SystemExit):
        T.main(["--help"])
    assert "--expert-parallel" in capsys.readouterr().out
    opts, cfg = sweep.parse(["--expert-parallel", "2", "--preset", "cpu"])
    assert cfg.run.expert_parallel == 2
    argv = to_argv(cfg)
    assert argv[argv.index("--expert-parallel") + 1] == "2"


@pytest.mark.parametrize("n_tokens, world", [(32 * 23 + 1, 2), (32 * 23 + 1, 4), (32 * 8 + 1, 3)])
def test_equal_per_rank_eval_batches_have_equal_shapes(n_tokens, world):
    """EP ranks exchange tokens in every forward: each rank must evaluate batches of the same sizes."""
    from train.data import eval_batches
    val = torch.randint(0, 256, (n_tokens,))
    uneven = [[x.shape for x, _ in eval_batches(val, 4, 32, None, rank=r, world_size=world)] for r in range(world)]
    even = [[x.shape for x, _ in eval_batches(val, 4, 32, None, rank=r, world_size=world, equal_per_rank=True)]
            for r in range(world)]
    assert any(u != uneven[0] for u in uneven)  # the case needs the option
    assert all(e == even[0] for e in even) and even[0]
    assert sum(s[0] for e in even for s in e) > sum(s[0] for u in uneven for s in u) - world


def test_sweep_refuses_expert_parallel_that_cannot_fit_before_running(tmp_path, capsys):
    argv = ["--preset", "cpu", "--device", "cpu", "--expert-parallel", "2", "--outdir-root", str(tmp_path / "sw")]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sweep.py: error: --expert-parallel 2: world size 1 is not a multiple of it "
                   "(launch with torchrun --nproc_per_node=2 or a multiple)"], err
    assert not (tmp_path / "sw").exists()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [("fp32", 2e-3), ("bf16", 2e-2)])  # TF32 / bf16 matmuls in other shapes
def test_ep2_on_two_gpus_trains_like_ddp(tmp_path, dtype, tol):
    """NCCL: torchrun with 2 GPUs, --expert-parallel 2 against plain DDP (the same flags otherwise)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (NCCL puts one rank on each)")
    root = Path(__file__).resolve().parents[1]
    logs = {}
    for ep in (1, 2):
        out = tmp_path / f"ep{ep}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(root / "train" / "train.py"), "--device", "cuda", "--dtype", dtype, "--expert-parallel", str(ep),
               "--num-stories", "2000", "--seq-len", "128", "--batch-size", "16", "--dim", "128", "--heads", "4",
               "--layers", "2", "--num-experts", "8", "--top-k", "2", "--capacity-factor", "1.0", "--dropout", "0",
               "--max-steps", "30", "--eval-interval", "15", "--log-interval", "1", "--lr", "1e-3",
               "--warmup-steps", "5", "--outdir", str(out), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[ep] = read_log(out)
    assert losses(logs[2]) == pytest.approx(losses(logs[1]), rel=tol)
    assert logs[2][-1]["param_max_abs_diff_across_ranks"] == 0.0
    assert losses(logs[2])[-1] < losses(logs[2])[0] - 0.5
