#!/usr/bin/env bash
# Download, as wheels for the GPU machines (CPython 3.12, x86_64 manylinux, no network there), into
# .whl/ at the repository root: everything `python3 dev.py setup` installs besides torch and what
# a torch machine has (asv 0.6.6 with asv_runner below 0.3, virtualenv, json5, tabulate, the test
# tools, setuptools for the editable install), with their dependencies.
#
#   bash tools/asv_wheelhouse.sh                 # asv==0.6.6 -> .whl/
#   bash tools/asv_wheelhouse.sh pkg==1.2 ...    # extra requirements into the same wheelhouse
#   WHEELHOUSE=/some/dir PYVER=3.12 bash tools/asv_wheelhouse.sh
#
# Then, on the GPU machine (after copying .whl/ there):
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.whl python3 dev.py setup
#
# .whl/ is gitignored: wheels are third-party code and are never committed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELHOUSE="${WHEELHOUSE:-$ROOT/.whl}"
PYVER="${PYVER:-3.12}"
ASV_REQ="${ASV_REQ:-asv==0.6.6}"

# Any local pip can download for another interpreter version/platform; prefer the project venv.
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi

mkdir -p "$WHEELHOUSE"
echo "+ $PY -m pip download $ASV_REQ $* (CPython $PYVER, manylinux x86_64) -> $WHEELHOUSE" >&2
# --only-binary=:all: is required by pip whenever --platform/--python-version are given.
# Two --platform tags: manylinux2014 (= manylinux_2_17) and manylinux_2_28 wheels are both
# installable on the GPU machines (glibc >= 2.28).  asv itself is abi3; only PyYAML is cp312.
"$PY" -m pip download \
    --disable-pip-version-check \
    --dest "$WHEELHOUSE" \
    --only-binary=:all: \
    --python-version "$PYVER" \
    --implementation cp \
    --abi "cp${PYVER/./}" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 \
    --platform any \
    "$ASV_REQ" "asv_runner>=0.2.1,<0.3" virtualenv json5 tabulate "pytest>=8" "pytest-benchmark>=5.2" "hypothesis>=6.100" \
    "setuptools>=64" wheel "$@"

n=$(find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' | wc -l)
size=$(du -sh "$WHEELHOUSE" | cut -f1)
echo "wheelhouse: $WHEELHOUSE ($n wheels, $size)" >&2
echo "set up offline with: PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELHOUSE python3 dev.py setup" >&2
