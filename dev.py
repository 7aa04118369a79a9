#!/usr/bin/env python3
"""Set-up and entry points that need nothing but python3.

    python3 dev.py bench   # set up if needed, then a quick benchmark of the whole routing path
    python3 dev.py test    # set up if needed, then the test suite

Set-up makes `.venv` (seeing the system's packages, so a GPU machine keeps its own torch),
installs `torch==2.13.0` and `triton==3.7.1` only when torch is missing, installs the test tools
(pytest, pytest-benchmark, hypothesis) into the venv even when the system Python has them (else
`.venv/bin/pytest` would not exist and an activated venv's `pytest` would be the system's, which
cannot import the venv's torch), and installs this project in editable mode with its test and
benchmark extras. Standard library only. Offline (a GPU machine without network): pip's own
`PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>` with the wheels `bash tools/asv_wheelhouse.sh` downloads.

`bench` on a CPU times torch and compile at a small size (about 30-60 s; the Triton interpreter
only with `--backend triton` or `all`) and appends records to runs/quick.jsonl (git-ignored).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".moe-routing-bench-ready"
TORCH_PIN = "torch==2.13.0"
TRITON_PIN = "triton==3.7.1"
ASV_MACHINE_FILE = Path("~/.asv-machine.json").expanduser()
# Installed into the venv itself (console scripts in .venv/bin); the versions are pyproject's `test` extra.
TEST_TOOLS = ["pytest>=8", "pytest-benchmark>=5.2", "hypothesis>=6.100"]
QUICK_OUT = "runs/quick.jsonl"


def _run(cmd: list[str], **kw) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def _check(cmd: list[str]) -> None:
    rc = _run(cmd)
    if rc != 0:
        sys.exit(f"dev.py: set-up step failed (exit {rc}): {' '.join(map(str, cmd))}")


def _importable(module: str) -> bool:
    return subprocess.call([str(VENV_PY), "-c", f"import {module}"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def _see_invoking_venv() -> None:
    """`venv --system-site-packages` shows the base Python's packages only. When python3 is itself a
    virtual environment (torch installed there, common on GPU machines), .venv sees its packages too
    (what the asv plugin's virtualenv-host does for asv's environments; dev.py cannot import the package)."""
    if sys.prefix == sys.base_prefix:
        return
    dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    purelib = Path(sysconfig.get_paths(vars={"base": str(VENV), "platbase": str(VENV)})["purelib"])
    purelib.mkdir(parents=True, exist_ok=True)
    (purelib / "_invoking_python.pth").write_text("\n".join(dirs) + "\n")


def setup() -> None:
    """Idempotent: does the work once, then only when pyproject.toml changes."""
    pyproject = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= pyproject.stat().st_mtime and _importable("moe_routing_bench"):
        if not ASV_MACHINE_FILE.exists():
            _check([VENV_PY, "-m", "moe_routing_bench.suite.store", "machine"])
        return
    if not VENV_PY.exists():
        _check([sys.executable, "-m", "venv", "--system-site-packages", VENV])
        _see_invoking_venv()
    missing = []
    if not _importable("torch"):
        missing += [TORCH_PIN, TRITON_PIN, "numpy"]
    elif not _importable("triton"):
        missing += [TRITON_PIN]
    if missing:
        _check([VENV_PY, "-m", "pip", "install", "-q", *missing])
    if not (VENV / "bin" / "pytest").exists():
        _check([VENV_PY, "-m", "pip", "install", "-q", "--ignore-installed", *TEST_TOOLS])
    _check([VENV_PY, "-m", "pip", "install", "-q", "-e", ".[test,bench]"])
    # asv's machine file, so that `asv run` asks no questions and files results under the stable name
    _check([VENV_PY, "-m", "moe_routing_bench.suite.store", "machine"])
    STAMP.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"setup", "bench", "test"}:
        print(__doc__)
        return 2
    setup()
    what, rest = argv[0], argv[1:]
    if what == "setup":
        return 0
    if what == "bench":
        return _run([VENV_PY, "-m", "moe_routing_bench.cli", "quick", "--out", QUICK_OUT, *rest])
    rc = _run([VENV_PY, "-m", "pytest", "-q", *rest])
    if rc == 5:
        print("dev.py: pytest collected no tests; that is a failure here", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
