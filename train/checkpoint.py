"""Run folders: one owner (a lock), checkpoints that cannot run code or go silently bad, the log.

A checkpoint ``ckpt.pt`` is written to a unique temporary name, fsynced, its SHA-256 written beside
it (``ckpt.pt.sha256``, sha256sum format), the previous checkpoint renamed to ``ckpt.prev.pt``,
then the new one renamed into place. Loading uses ``torch.load(weights_only=True)`` (tensors and
plain types only, so a crafted file cannot run code) after checking the digest; a latest checkpoint
that is missing, altered or unreadable falls back to the previous one with a warning.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

import moe_routing_bench as mrb

CKPT_NAME = "ckpt.pt"
PREV_NAME = "ckpt.prev.pt"
LOCK_NAME = ".lock"
LOG_NAME = "train_log.jsonl"
HPARAMS_NAME = "hparams.json"


class DiskFull(OSError):
    """No space left while writing; the files written before are intact."""


def disk_full_message(path: Path | str) -> str:
    return (f"the disk is full (writing {path}); nothing was lost: the previous checkpoint and the log are "
            "intact. Free some space and rerun the same command to resume")


class RunLock:
    """Exclusive ownership of a run folder for the life of a process (flock on ``.lock``); a second
    owner fails at once with ConfigError naming the holder."""

    def __init__(self, folder: Path | str, what: str = "run folder"):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self.file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise mrb.ConfigError(f"{self.what} {self.path.parent} is in use by another process (pid {holder}); "
                                  "wait for it to finish, stop it, or choose another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        remove_stale_temps(self.path.parent)  # safe: nobody else writes here now
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def remove_stale_temps(folder: Path) -> None:
    """Temporary files of a writer that was killed (only the folder's owner calls this)."""
    patterns = [f".{CKPT_NAME}.*.tmp", f".{CKPT_NAME}.sha256.*.tmp",
                *(f".{name}.*" for name in (LOG_NAME, HPARAMS_NAME))]  # the last: write_atomic's
    for pattern in patterns:
        for p in folder.glob(pattern):
            p.unlink(missing_ok=True)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_new(folder: Path, name: str, data: bytes) -> Path:
    """``data`` into a fresh temporary file in ``folder``, fsynced; its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path | str, state: dict) -> Path:
    """Write ``state`` as ``folder/ckpt.pt`` with its digest; keep the previous one as ckpt.prev.pt.
    Raises DiskFull (nothing replaced) when the disk is full."""
    folder = Path(folder)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    latest, prev = folder / CKPT_NAME, folder / PREV_NAME
    tmps: list[Path] = []
    try:
        tmps.append(_write_new(folder, CKPT_NAME, data))
        tmps.append(_write_new(folder, CKPT_NAME + ".sha256", f"{digest}  {CKPT_NAME}\n".encode()))
    except OSError as e:
        for t in tmps:
            t.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DiskFull(errno.ENOSPC, disk_full_message(latest)) from None
        raise
    if latest.exists():
        os.replace(latest, prev)
        if _digest_path(latest).exists():
            os.replace(_digest_path(latest), _digest_path(prev))
    os.replace(tmps[1], _digest_path(latest))
    os.replace(tmps[0], latest)
    _fsync_dir(folder)
    return latest


def _read_verified(path: Path, device) -> dict:
    """The state in ``path`` after checking its digest; raises ValueError saying what is wrong."""
    data = path.read_bytes()
    digest_file = _digest_path(path)
    if not digest_file.exists():
        raise ValueError("no checksum file beside it")
    expected = digest_file.read_text().split()[0] if digest_file.read_text().strip() else ""
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError("checksum mismatch (the file was altered or cut short)")
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain types
        raise ValueError(f"not a plain-data checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def load_checkpoint(folder: Path | str, device) -> dict | None:
    """The newest usable checkpoint's state, or None when the folder has none. A latest checkpoint
    that fails its check is set aside (``ckpt.pt.corrupt``) with a warning and the previous one is
    used; when none is usable, ConfigError says what to do."""
    folder = Path(folder)
    problems = []
    for path in (folder / CKPT_NAME, folder / PREV_NAME):
        if not path.exists():
            continue
        try:
            state = _read_verified(path, device)
        except (ValueError, OSError) as e:
            problems.append(f"{path.name}: {e}")
            print(f"warning: checkpoint {path} is not usable: {e}", file=sys.stderr, flush=True)
            continue
        if problems:  # the latest was bad: keep it out of the next rotation
            bad = folder / CKPT_NAME
            try:
                os.replace(bad, bad.with_name(CKPT_NAME + ".corrupt"))
            except FileNotFoundError:  # another rank of the same run moved it first
                pass
            print(f"warning: resuming from the previous checkpoint {path} (step {int(state['step'])})",
                  file=sys.stderr, flush=True)
        return state
    if problems:
        raise mrb.ConfigError(f"no usable checkpoint in {folder} ({'; '.join(problems)}); "
                              "delete the ckpt files or pass --no-resume to start over")
    return None


def remove_checkpoints(folder: Path | str) -> None:
    folder = Path(folder)
    for name in (CKPT_NAME, PREV_NAME):
        (folder / name).unlink(missing_ok=True)
        _digest_path(folder / name).unlink(missing_ok=True)


def truncate_log(path: Path, max_step: int) -> list[dict]:
    """Keep the records of steps <= max_step (no done record); rewrite atomically."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed writer
            if not row.get("done") and int(row.get("step", 1 << 62)) <= max_step:
                rows.append(row)
    mrb.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
