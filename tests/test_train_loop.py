"""The training loop: learning, logs, resume after a kill, throughput accounting, seed flags, bench."""
import json
import math
import time

import pytest
import torch

from train import train as T


def args_for(tmp_path, *extra, name="run"):
    argv = ["--device", "cpu", "--num-stories", "300", "--seq-len", "32", "--batch-size", "8", "--layers", "2",
            "--dim", "32", "--heads", "2", "--ffn-mult", "2", "--num-experts", "4", "--top-k", "2",
            "--lr", "3e-3", "--warmup-steps", "3", "--dropout", "0.0", "--eval-batches", "4",
            "--outdir", str(tmp_path / name), "--quiet", *map(str, extra)]
    return T.normalize_args(T.build_parser().parse_args(argv))[0]


def read_log(path):
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_few_steps_reduce_loss_and_log_everything(tmp_path):
    args = args_for(tmp_path, "--max-steps", 40, "--eval-interval", 20, "--log-interval", 5)
    done = T.train(args)
    rows = read_log(tmp_path / "run")
    recs, last = rows[:-1], rows[-1]
    assert last["done"] is True and last == done and last["step"] == 40
    assert [r["step"] for r in recs] == list(range(5, 41, 5))
    assert recs[-1]["train_loss"] < recs[0]["train_loss"] - 1.0
    assert recs[-1]["val_loss"] < math.log(256) - 1.0
    for key in ["step", "train_loss", "val_loss", "ppl", "tokens_per_s", "tokens_per_s_per_rank", "drop_rate",
                "token_drop_rate", "load_cv", "gate_entropy", "balance_loss", "z_loss", "flops_per_token",
                "tflops", "bw_GiBps_strict", "lr", "elapsed", "causal_safe", "router"]:
        assert key in recs[-1], key
    assert recs[-1]["ppl"] == pytest.approx(math.exp(recs[-1]["val_loss"]))
    assert recs[1]["val_loss"] is None and recs[3]["val_loss"] is not None
    assert recs[-1]["causal_safe"] is True and recs[-1]["router"] == "softk"
    hp = json.loads((tmp_path / "run" / "hparams.json").read_text())
    assert hp["args"]["max_steps"] == 40 and hp["environment"]["torch"] == torch.__version__
    assert {"git_commit", "device_name"} <= set(hp["environment"]) and hp["flops_per_token"] > 0
    assert (tmp_path / "run" / "ckpt.pt").exists()


@pytest.mark.parametrize("router", ["softk", "aux-free"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, router):
    common = ["--max-steps", 8, "--eval-interval", 4, "--log-interval", 1, "--dropout", 0.1, "--router", router,
              "--capacity-factor", "1.0"]
    T.train(args_for(tmp_path, *common, name="full"))
    killed = args_for(tmp_path, *common, name="killed")
    with pytest.raises(T.SimulatedKill):
        T.train(killed, hooks={"kill_after_step": 6})  # checkpoint at 4, log has 1..6
    assert [r["step"] for r in read_log(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]
    T.train(args_for(tmp_path, *common, name="killed"))  # resumes at 4
    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "killed")
    assert [r.get("step") for r in resumed] == [r.get("step") for r in full] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    for a, b in zip(full[:-1], resumed[:-1]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-6), a["step"]
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
    assert resumed[-1]["final_val_loss"] == pytest.approx(full[-1]["final_val_loss"], rel=1e-6)
    hp = json.loads((tmp_path / "killed" / "hparams.json").read_text())
    assert hp["resumed_from_step"] == 4
    if router == "aux-free":
        a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["model"]
        b = torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=False)["model"]
        biases = [k for k in a if k.endswith("bias_E")]
        assert biases and all(torch.equal(a[k], b[k]) for k in biases)
        assert any(a[k].abs().sum() > 0 for k in biases)  # the bias moved and was restored


def test_no_resume_rewrites_the_log(tmp_path):
    T.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 2))
    T.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 2, "--no-resume"))
    assert [r["step"] for r in read_log(tmp_path / "run")] == [2, 4, 4]


def test_tokens_per_s_excludes_eval_and_checkpoint_time(tmp_path):
    sleep_eval, sleep_ckpt = 1.5, 0.3
    slow = {"before_eval": lambda: time.sleep(sleep_eval), "before_checkpoint": lambda: time.sleep(sleep_ckpt)}
    args = args_for(tmp_path, "--max-steps", 6, "--eval-interval", 3, "--seq-len", 16, "--batch-size", 2)
    done = T.train(args, hooks=slow)
    rows = read_log(tmp_path / "run")[:-1]
    tokens_per_step = 2 * 16
    # tokens/s is the timed steps' tokens over their own time: the per-interval times add up to
    # train_time_s, and the 2 x (1.5 + 0.3) s of evaluation and checkpointing lie outside it
    times = [r["timed_steps"] * tokens_per_step / r["tokens_per_s"] for r in rows]
    assert sum(times) == pytest.approx(done["train_time_s"], rel=1e-6)
    assert done["elapsed"] - done["train_time_s"] > 2 * (sleep_eval + sleep_ckpt)
    # the interval after an evaluation: had the 1.5 s been counted, at most 3*32/1.5 = 64 tokens/s
    assert rows[1]["tokens_per_s"] > 3 * tokens_per_step / sleep_eval
    assert rows[1]["step_ms"] * rows[1]["timed_steps"] < 1000 * sleep_eval


def test_seed_flags_are_accepted_and_mapped(tmp_path, capsys):
    a, notes = T.normalize_args(T.build_parser().parse_args(["--router", "torch_soft"]))
    assert a.router == "softk" and a.backend == "torch" and any("backend name" in n for n in notes)
    a, _ = T.normalize_args(T.build_parser().parse_args(["--strategy", "TOPK_HARD", "--router", "torch_soft"]))
    assert a.router == "topk-hard" and a.backend == "torch"
    a, _ = T.normalize_args(T.build_parser().parse_args(["--strategy", "top1", "--top-k", "4"]))
    assert a.top_k == 1
    a, notes = T.normalize_args(T.build_parser().parse_args(
        ["--capacity-factor", "none", "--tokenizer", "EleutherAI/gpt-neo-125M", "--num-workers", "2"]))
    assert a.capacity_factor is None and a.tokenizer == "byte"
    assert any("byte-level" in n for n in notes) and any("unused" in n for n in notes)
    a, _ = T.normalize_args(T.build_parser().parse_args(["--router", "expert_choice", "--dist-backend", "nccl"]))
    assert a.router == "expert-choice"
    help_text = " ".join(T.build_parser().format_help().split())
    for phrase in ["level only (256 ids", "unused", "only 'linear'", "torch_soft", "'none' = dropless"]:
        assert phrase in help_text, phrase
    with pytest.raises(SystemExit) as e:
        T.main(["--router-arch", "mlp", "--max-steps", "1", "--outdir", str(tmp_path / "x")])
    assert e.value.code == 2 and "only 'linear'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.build_parser().parse_args(["--capacity-factor", "-1"])


@pytest.mark.parametrize("router", ["expert-choice", "dense", "hash", "topk-hard"])
def test_other_routers_train_and_mark_causality(tmp_path, router):
    T.train(args_for(tmp_path, "--max-steps", 4, "--eval-interval", 4, "--router", router, "--capacity-factor", "1.0"))
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
    rec = T.bench(args_for(tmp_path, "--bench", "--bench-warmup", 1, "--bench-steps", 3, "--bench-repeats", 2,
                           "--bench-out", out, "--bench-sync-dir", tmp_path / "sync"))
    assert rec["tokens_per_s"] > 0 and rec["timed_steps"] == 3 and len(rec["tokens_per_s_all"]) == 2
    assert json.loads(out.read_text())["tokens_per_s"] == rec["tokens_per_s"]
    assert "tokens/s" in capsys.readouterr().out
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
