"""Records: the metadata every measurement carries, and atomic JSONL writing.

Every record gets: device name, torch and triton versions, git commit, the command that produced
it, host and time (DESIGN section 5); the caller adds dtype, shapes, workload, seed and the copy
ceiling where bandwidth is reported.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

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
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": git_commit(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file so a reader never sees half of it (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append records as JSON lines; the file is replaced atomically, so an interrupted run never
    leaves a torn line."""
    path = Path(path)
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    write_atomic(path, existing + "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
