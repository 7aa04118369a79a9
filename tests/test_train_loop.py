"""The training loop: learning, logs, resume after a crash, throughput accounting, seed flags, bench."""
import json
import math
import time

import pytest
import torch
from helpers import Crash, crash_at

from train import loop
from train import train as T
from train.config import parse_train_args


def args_for(tmp_path, *extra, name="run"):
    argv = ["--device", "cpu", "--num-stories", "300", "--seq-len", "32", "--batch-size", "8", "--layers", "2",
            "--dim", "32", "--heads", "2", "--ffn-mult", "2", "--num-experts", "4", "--top-k", "2",
            "--lr", "3e-3", "--warmup-steps", "3", "--dropout", "0.0", "--eval-batches", "4",
            "--outdir", str(tmp_path / name), "--quiet", *map(str, extra)]
    return parse_train_args(argv)[0]


def read_log(path):
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_few_steps_reduce_loss_and_log_everything(tmp_path):
    args = args_for(tmp_path, "--max-steps", 40, "--eval-interval", 20, "--log-interval", 5)
    done = loop.train(args)
    rows = read_log(tmp_path / "run")
    recs, last = rows[:-1], rows[-1]
    assert last["done"] is True and last == done and last["step"] == 40
    assert [r["step"] for r in recs] == list(range(5, 41, 5))
    assert recs[-1]["train_loss"] < recs[0]["train_loss"] - 1.0
    assert recs[-1]["val_loss"] < math.log(256) - 1.0
    for key in ["step", "train_loss", "val_loss", "ppl", "tokens_per_s", "tokens_per_s_per_rank", "drop_rate",
                "token_drop_rate", "load_cv", "gate_entropy", "balance_loss", "z_loss", "flops_per_token",
                "tflops", "bw_GiBps_strict", "bytes_per_token_strict", "moe_layers", "lr", "elapsed",
                "causal_safe", "router"]:
        assert key in recs[-1], key
    assert recs[-1]["ppl"] == pytest.approx(math.exp(recs[-1]["val_loss"]))
    assert recs[1]["val_loss"] is None and recs[3]["val_loss"] is not None
    assert recs[-1]["causal_safe"] is True and recs[-1]["router"] == "softk"
    hp = json.loads((tmp_path / "run" / "hparams.json").read_text())
    assert hp["args"]["max_steps"] == 40 and hp["environment"]["torch"] == torch.__version__
    assert {"git_commit", "device_name"} <= set(hp["environment"]) and hp["flops_per_token"] > 0
    assert (tmp_path / "run" / "ckpt.pt").exists()
    # per MoE layer, (2 + 2k) * dim * 4 bytes (fp32 on CPU); bandwidth per layer and over the layers
    assert recs[-1]["bytes_per_token_strict"] == (2 + 2 * 2) * 32 * 4 and recs[-1]["moe_layers"] == 2
    assert recs[-1]["bw_GiBps_strict_all_layers"] == pytest.approx(2 * recs[-1]["bw_GiBps_strict"])
    assert recs[-1]["bw_GiBps_strict"] == pytest.approx(recs[-1]["tokens_per_s"] * 768 / 2**30)


@pytest.mark.parametrize("router", ["softk", "aux-free"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, router):
    common = ["--max-steps", 8, "--eval-interval", 4, "--log-interval", 1, "--dropout", 0.1, "--router", router,
              "--capacity-factor", "1.0"]
    loop.train(args_for(tmp_path, *common, name="full"))
    killed = args_for(tmp_path, *common, name="killed")
    with pytest.raises(Crash):
        loop.train(killed, on_event=crash_at(6))  # checkpoint at 4, log has 1..6
    assert [r["step"] for r in read_log(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]
    loop.train(args_for(tmp_path, *common, name="killed"))  # resumes at 4
    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "killed")
    assert [r.get("step") for r in resumed] == [r.get("step") for r in full] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    for a, b in zip(full[:-1], resumed[:-1]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-6), a["step"]
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
    assert resumed[-1]["final_val_loss"] == pytest.approx(full[-1]["final_val_loss"], rel=1e-6)
    hp = json.loads((tmp_path / "killed" / "hparams.json").read_text())
    assert hp["resumed_from_step"] == 4
    if router == "aux-free":
        a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True)["model"]
        biases = [k for k in a if k.endswith("bias_E")]
        assert biases and all(torch.equal(a[k], b[k]) for k in biases)
        assert any(a[k].abs().sum() > 0 for k in biases)  # the bias moved and was restored


def test_no_resume_rewrites_the_log(tmp_path):
    loop.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 2))
    loop.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 2, "--no-resume"))
    assert [r["step"] for r in read_log(tmp_path / "run")] == [2, 4, 4]


def test_tokens_per_s_excludes_eval_and_checkpoint_time(tmp_path):
    sleep_eval, sleep_ckpt = 1.5, 0.3
    pause = {"eval": sleep_eval, "checkpoint": sleep_ckpt}
    args = args_for(tmp_path, "--max-steps", 6, "--eval-interval", 3, "--seq-len", 16, "--batch-size", 2)
    done = loop.train(args, on_event=lambda event, step: time.sleep(pause.get(event, 0)))
    rows = read_log(tmp_path / "run")[:-1]
    tokens_per_step = 2 * 16
    # tokens/s is the timed steps' tokens over their own time: the per-interval times add up to
    # train_time_s, and the 2 x (1.5 + 0.3) s of evaluation and checkpointing lie outside it
    times = [r["timed_steps"] * tokens_per_step / r["tokens_per_s"] for r in rows]
    assert sum(times) == pytest.approx(done["train_time_s"], rel=1e-6)
    assert done["elapsed"] - done["train_time_s"] > 2 * (sleep_eval + sleep_ckpt)
    # between the two records lie the checkpoint after step 3 and the evaluation at step 6: the
    # second interval's time is at most the wall time between the records without them
    assert times[1] <= rows[1]["elapsed"] - rows[0]["elapsed"] - sleep_ckpt - sleep_eval + 0.05


def test_seed_flags_are_accepted_and_mapped(tmp_path, capsys):
    a, notes = parse_train_args(["--router", "torch_soft"])
    assert a.moe.router == "softk" and a.moe.backend == "torch" and any("backend name" in n for n in notes)
    a, _ = parse_train_args(["--strategy", "TOPK_HARD", "--router", "torch_soft"])
    assert a.moe.router == "topk-hard" and a.moe.backend == "torch"
    a, _ = parse_train_args(["--strategy", "top1", "--top-k", "4"])
    assert a.moe.top_k == 1
    a, notes = parse_train_args(["--capacity-factor", "none", "--tokenizer", "EleutherAI/gpt-neo-125M",
                                 "--num-workers", "2", "--batch-per-gpu", "5"])
    assert a.moe.capacity_factor is None and a.run.tokenizer == "byte" and a.run.batch_size == 5
    assert any("byte-level" in n for n in notes) and any("unused" in n for n in notes)
    a, _ = parse_train_args(["--router", "expert_choice", "--dist-backend", "nccl"])
    assert a.moe.router == "expert-choice"
    assert T.main(["--router-arch", "mlp", "--max-steps", "1", "--outdir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "only 'linear'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        parse_train_args(["--capacity-factor", "-1"])


@pytest.mark.parametrize("router", ["expert-choice", "dense", "hash", "topk-hard"])
def test_other_routers_train_and_mark_causality(tmp_path, router):
    loop.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 4, "--router", router, "--capacity-factor", "1.0"))
    rows = read_log(tmp_path / "run")
    assert rows[0]["causal_safe"] is (router != "expert-choice")
    assert rows[-1]["causal_safe"] is (router != "expert-choice") and rows[-1]["done"]
    if router == "dense":
        assert rows[0]["drop_rate"] is None
    if router == "expert-choice":
        hp = json.loads((tmp_path / "run" / "hparams.json").read_text())
        assert hp["causal_safe"] is False


def test_bench_prints_tokens_per_s(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rec = loop.bench(args_for(tmp_path, "--bench", "--bench-warmup", 1, "--bench-steps", 3, "--bench-repeats", 2,
                           "--bench-out", out, "--bench-sync-dir", tmp_path / "sync"))
    assert rec["tokens_per_s"] > 0 and rec["timed_steps"] == 3 and len(rec["tokens_per_s_all"]) == 2
    assert json.loads(out.read_text())["tokens_per_s"] == rec["tokens_per_s"]
    assert "tokens/s" in capsys.readouterr().out
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
