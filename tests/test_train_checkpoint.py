"""Run folders: checkpoints load as plain data, carry a checksum, fall back to the previous one,
survive SIGKILL mid-save and a full disk; one owner per folder."""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import moe_routing_bench as mrb
from train import checkpoint as ck
from train import loop
from train.config import parse_train_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--num-stories", "200", "--seq-len", "16", "--batch-size", "4", "--layers", "1",
        "--dim", "16", "--heads", "2", "--ffn-mult", "2", "--num-experts", "4", "--lr", "3e-3",
        "--warmup-steps", "1", "--dropout", "0.1", "--eval-batches", "2", "--quiet"]


def cfg_for(outdir, *extra):
    return parse_train_args([*TINY, "--outdir", str(outdir), *map(str, extra)])[0]


def log_steps(outdir):
    return [json.loads(line).get("step") for line in (Path(outdir) / "train_log.jsonl").read_text().splitlines()]


class FileCreatingPayload:
    """Unpickling this runs open(path, 'w'): the proof-of-concept of a checkpoint that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_round_trip_is_plain_data(tmp_path):
    state = {"step": 3, "w": torch.arange(4.0), "progress": {"best": None, "betas": (0.9, 0.999)},
             "gen": torch.Generator().manual_seed(1).get_state()}
    ck.save_checkpoint(tmp_path, state)
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # no pickled objects inside
    assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])
    digest = (tmp_path / "ckpt.pt.sha256").read_text().split()
    assert digest[1] == "ckpt.pt" and len(digest[0]) == 64
    ck.save_checkpoint(tmp_path, {**state, "step": 4})
    assert ck.load_checkpoint(tmp_path, "cpu")["step"] == 4
    assert torch.load(tmp_path / "ckpt.prev.pt", weights_only=True)["step"] == 3  # the previous one kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.prev.pt", "ckpt.prev.pt.sha256", "ckpt.pt",
                                                          "ckpt.pt.sha256"]  # no temporary left


def test_malicious_checkpoint_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ck.save_checkpoint(tmp_path, {"step": 1})
    ck.save_checkpoint(tmp_path, {"step": 2})
    evil = pickle.dumps({"step": 9, "x": FileCreatingPayload(str(marker))})
    (tmp_path / "ckpt.pt").write_bytes(evil)
    # even with a matching checksum (an attacker can write both files) nothing is executed
    import hashlib
    (tmp_path / "ckpt.pt.sha256").write_text(hashlib.sha256(evil).hexdigest() + "  ckpt.pt\n")
    state = ck.load_checkpoint(tmp_path, "cpu")
    assert not marker.exists()
    assert state["step"] == 1  # the previous good checkpoint (step 2 became "prev" at the second save)
    assert "not a plain-data checkpoint" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt.corrupt").exists() and not (tmp_path / "ckpt.pt").exists()


def test_torch_save_of_an_object_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": FileCreatingPayload(str(marker))}, tmp_path / "ckpt.pt")
    marker.unlink(missing_ok=True)  # absent before loading
    with pytest.raises(mrb.ConfigError, match="no usable checkpoint.*--no-resume"):
        ck.load_checkpoint(tmp_path, "cpu")
    assert not marker.exists()


def test_corrupted_latest_falls_back_to_previous_and_training_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    loop.train(cfg_for(out, "--max-steps", 6, "--eval-interval", 2, "--log-interval", 1))
    ref = log_steps(out)
    data = bytearray((out / "ckpt.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the latest (step 6)
    (out / "ckpt.pt").write_bytes(bytes(data))
    done = loop.train(cfg_for(out, "--max-steps", 8, "--eval-interval", 2, "--log-interval", 1))
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "resuming from the previous checkpoint" in err and "step 4" in err
    assert done["step"] == 8
    assert log_steps(out) == [1, 2, 3, 4, 5, 6, 7, 8, 8] and ref[:4] == [1, 2, 3, 4]
    hp = json.loads((out / "hparams.json").read_text())
    assert hp["resumed_from_step"] == 4


def test_second_writer_fails_at_once(tmp_path):
    out = tmp_path / "run"
    with ck.RunLock(out):
        with pytest.raises(mrb.ConfigError, match=f"in use by another process \\(pid {os.getpid()}\\)"):
            loop.train(cfg_for(out, "--max-steps", 2))
    # another process, as a user would see it: one line, exit 2, quickly
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {str(ROOT)!r})
        from train.checkpoint import RunLock
        with RunLock({str(out)!r}):
            print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), *TINY, "--max-steps", "2",
                            "--outdir", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"train.py: error: run folder {out} is in use by another process (pid {holder.pid}); "
            "wait for it to finish, stop it, or choose another folder"]
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "train_log.jsonl").exists()


def test_disk_full_is_one_clear_line(tmp_path, monkeypatch):
    out = tmp_path / "run"
    loop.train(cfg_for(out, "--max-steps", 2, "--eval-interval", 2))
    before = (out / "ckpt.pt").read_bytes()
    real = ck._write_new

    def full(folder, name, data):
        real(folder, name, data[: len(data) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write_new", full)
    from train import train as T
    with pytest.raises(ck.DiskFull) as e:
        loop.train(cfg_for(out, "--max-steps", 4, "--eval-interval", 2))
    msg = T.fatal_message(e.value)
    assert msg.startswith("the disk is full") and "nothing was lost" in msg and "\n" not in msg
    assert (out / "ckpt.pt").read_bytes() == before  # the good checkpoint untouched
    # leftover temporaries of the failed write are gone once the folder's next owner starts
    monkeypatch.setattr(ck, "_write_new", real)
    with ck.RunLock(out):
        assert list(out.glob(".*.tmp")) == []


SAVE_KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from train import checkpoint as ck, loop
from train.config import parse_train_args
real, calls = ck._write_new, []
def dying(folder, name, data):
    calls.append(name)
    if name == "ckpt.pt" and len(calls) > 2:  # the second checkpoint: half the bytes, then SIGKILL
        path = real(folder, name, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(folder, name, data)
ck._write_new = dying
loop.train(parse_train_args({argv!r})[0])
"""


def test_sigkill_during_save_resumes_like_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--max-steps", "6", "--eval-interval", "2", "--log-interval", "1"]
    loop.train(parse_train_args([*common, "--outdir", str(tmp_path / "full")])[0])
    argv = [*common, "--outdir", str(tmp_path / "killed")]
    r = subprocess.run([sys.executable, "-c", SAVE_KILLER.format(root=str(ROOT), argv=argv)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert list((tmp_path / "killed").glob(".ckpt.pt.*.tmp"))  # the torn temporary is there
    loop.train(parse_train_args(argv)[0])  # resumes from step 2
    full = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("step") for r in resumed] == [r.get("step") for r in full]
    for a, b in zip(full[:-1], resumed[:-1]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-6), a["step"]
    assert resumed[-1]["final_val_loss"] == pytest.approx(full[-1]["final_val_loss"], rel=1e-6)
    assert json.loads((tmp_path / "killed" / "hparams.json").read_text())["resumed_from_step"] == 2
    assert list((tmp_path / "killed").glob(".*.tmp")) == []
