#!/usr/bin/env bash
# The design card's commands as a new user types them on a GPU machine, each timed, in a clean copy
# of this tree made a one-commit repository on `main` (a GPU machine here gets a copy of the working
# tree whose .git is not this repository's; the commit recorded is the copy's: relabel on import).
#
#   OUT=/dir [STEP_TIMEOUT=seconds] [STEPS="setup asv-run asv-publish pytest-benchmark sweep"] bash tools/gpu_as_typed.sh
#   back here: tar xf <OUT>/asv_results.tar -C /tmp/r && python -m moe_routing_bench.suite.store \
#                import-results /tmp/r --commit <the commit copied>
#
# Set-up is the README's `python3 dev.py setup`, offline from .whl/ when there is one
# (tools/asv_wheelhouse.sh). Each step's output goes to <OUT>/<step>.log with seconds since its
# start on every line; <OUT>/times.txt has one line per step: name, exit status, seconds.
set -uo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-$SRC/out}" && cd "${OUT:-$SRC/out}" && pwd)"
CLONE="${CLONE:-/tmp/moe-routing-bench-clone}"
STEPS="${STEPS:-setup asv-run asv-publish pytest-benchmark sweep}"

if [ ! -d "$CLONE/.git" ]; then
    mkdir -p "$CLONE"
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./.asv --exclude=./runs --exclude=./out -cf - . \
        | tar -C "$CLONE" -xf -
    (cd "$CLONE" && git init -q -b main && git add -A \
        && git -c user.name=new-user -c user.email=new-user@localhost commit -q -m "working tree") || exit 1
fi
cd "$CLONE"
[ -f .venv/bin/activate ] && source .venv/bin/activate

stamped() {  # seconds since the step started, on every output line
    python3 -u -c 'import sys, time
t = time.time()
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t:7.1f} {line}")'
}

step() {
    local name="$1" start rc
    shift
    start=$(date +%s.%N)
    timeout "${STEP_TIMEOUT:-0}" "$@" 2>&1 | stamped > "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s rc=%d %.1f s\n' "$name" "$rc" "$(python3 -c "print($(date +%s.%N) - $start)")" | tee -a "$OUT/times.txt"
}

for s in $STEPS; do
    case "$s" in
        setup)
            if [ -d .whl ]; then
                step setup env PIP_NO_INDEX=1 PIP_FIND_LINKS="$CLONE/.whl" python3 dev.py setup
            else
                step setup python3 dev.py setup
            fi
            source .venv/bin/activate ;;
        asv-run) step asv-run asv run ;;
        asv-publish) step asv-publish asv publish ;;
        pytest-benchmark) step pytest-benchmark pytest --benchmark-only ;;
        sweep) step sweep torchrun train/sweep.py ;;
        *) echo "gpu_as_typed.sh: unknown step $s" >&2; exit 2 ;;
    esac
done

# what came back: new asv results, the published page's size, the sweep's logs (no checkpoints)
(cd results/asv && tar -cf "$OUT/asv_results.tar" --exclude=benchmarks.json \
    $(git -C "$CLONE" status --porcelain --untracked-files=all -- . | sed -n 's|^?? results/asv/||p')) 2>/dev/null
[ -d runs ] && tar -cf "$OUT/runs.tar" --exclude='ckpt*' --exclude='*.pt' runs
du -sh .asv/html/ 2>/dev/null | tee -a "$OUT/times.txt"
git status --porcelain | tee "$OUT/git_status.txt"
