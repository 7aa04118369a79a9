"""Records: the metadata every measurement carries; atomic writes and crash-safe JSONL appends.

Every record gets: device name, torch and triton versions, git commit, the command that produced
it, host and time (DESIGN section 5); the caller adds dtype, shapes, workload, seed and the copy
ceiling where bandwidth is reported.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import torch


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the checkout (with +dirty), or $MOE_BENCH_GIT_COMMIT where the tree is a copy without .git."""
    if os.environ.get("MOE_BENCH_GIT_COMMIT"):
        return os.environ["MOE_BENCH_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def environment(device: torch.device | str) -> dict:
    """Metadata of this process and device, shared by every record it writes."""
    return {
        "device": torch.device(device).type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": git_commit(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


TMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def clean_orphaned_temps(path: str | Path) -> list[Path]:
    """Remove temp files that `write_atomic(path)` left when its process was killed.

    Temp names are `.<name>.<pid>.<random>.tmp`; one whose writer process is gone is an orphan.
    Returns the removed paths."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = _temp_prefix(path)
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{TMP_SUFFIX}"):
        pid_text = tmp.name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write to (with any writer: torch.save, asv's Results.save, ...);
    on normal exit it is fsynced and renamed over `path`, on an exception removed.

    The one atomic-write implementation of the project. A killed writer's temp file is removed by
    the next atomic write to the same path (`clean_orphaned_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphaned_temps(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result should read like any new file
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so a reader sees the old or the new content, never half (temp + rename)."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _drop_torn_tail(fd: int) -> None:
    """Truncate a last line without its newline (a writer killed mid-record); call under the lock."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Append records as JSON lines; returns how many. Safe with concurrent writers and kills.

    One descriptor opened with O_APPEND, held under an exclusive flock while the batch is written
    (one write() call, repeated only for a short write) and fsynced: concurrent appenders never
    interleave or overwrite each other, and nothing already in the file is rewritten. A record torn
    by a writer killed mid-write is at the end of the file with no newline: `read_jsonl` drops it,
    and the next `append_jsonl` truncates it away before writing."""
    path = Path(path)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _drop_torn_tail(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    return data.count(b"\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file. A last line without its newline that does not parse (a writer
    killed mid-record) is dropped; any other unparseable line raises ValueError naming it."""
    text = Path(path).read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the torn tail: no newline after it
                break
            raise ValueError(f"{path}: line {number} is not a JSON record") from None
    return rows
