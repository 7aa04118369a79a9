#!/usr/bin/env bash
# The GPU asv suites over a list of commits, in one call, on a machine with torch and no network.
#
#   here (has git):   python tools/asv_runs.py pack $COMMITS && bash tools/asv_wheelhouse.sh
#   on the GPU:       COMMITS="a b c" OUT=/dir bash tools/gpu_asv.sh          (carry .gl and .whl)
#                     NOISE_RUNS=10 measures the noise of the working tree first
#   back here:        mkdir -p /tmp/r && tar xf <OUT>/asv_results.tar -C /tmp/r \
#                       && python -m moe_routing_bench.suite.store import-results /tmp/r
#                     (and, after a noise run, copy <OUT>/noise/*.json to results/noise/, then
#                      python tools/asv_runs.py thresholds)
#
# Environment: COMMITS (required; full hashes or refs, oldest first), OUT (where the one result tar
# goes; default ./out), PYTHON (the python3 that runs dev.py setup; default python3), BENCH (asv -b regex; default the GPU methods, '^bench_.*\.track_'),
# MACHINE (default: named after the GPU, e.g. nvidia-h200), MOE_BENCH_ASV_SUBSET=main and
# MOE_BENCH_ASV_BACKENDS=torch,triton (a cheaper history: benchmarks/common.py), DEADLINE_S (start no commit past it), NOISE_RUNS,
# NOISE_DEADLINE_S (start no noise run past it, after two), HISTORY_BENCH (the history's
# asv -b regex, default BENCH), NOISE_MERGE=1 (add to
# the runs in results/noise/<machine>.json); with MOE_BENCH_GIT_COMMIT (the commit
# the working tree is, `pack`ed) the first noise run is also that commit's history entry: $OUT/noise_run1.tar.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-out}"
[ -n "${COMMITS:-}${NOISE_RUNS:-}" ] || { echo 'gpu_asv.sh: COMMITS="<hash> <hash> ..." (oldest first) and/or NOISE_RUNS=N' >&2; exit 2; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the README's set-up (offline from .whl/ when there is one); asv runs from its venv
if [ -d .whl ]; then
    PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl" "${PYTHON:-python3}" dev.py setup
else
    "${PYTHON:-python3}" dev.py setup
fi
PY="$PWD/.venv/bin/python"
HISTORY_BENCH="${HISTORY_BENCH:-${BENCH:-}}"
mkdir -p "$OUT"
start=$(date +%s)
if [ -n "${NOISE_RUNS:-}" ]; then
    "$PY" tools/asv_runs.py noise --runs "$NOISE_RUNS" ${BENCH:+--bench "$BENCH"} ${MACHINE:+--machine "$MACHINE"} \
        ${NOISE_DEADLINE_S:+--deadline-s "$NOISE_DEADLINE_S"} \
        ${NOISE_MERGE:+--merge} ${MOE_BENCH_GIT_COMMIT:+--as-commit "$MOE_BENCH_GIT_COMMIT" --bundle "$OUT/noise_run1.tar"}
    mkdir -p "$OUT/noise" && cp results/noise/*.json "$OUT/noise/"
fi
if [ -n "${COMMITS:-}" ]; then
    # shellcheck disable=SC2086
    # old commits tune with triton.autotune in every process: keep its results on disk across processes
    TRITON_CACHE_AUTOTUNING=1 "$PY" tools/asv_runs.py history $COMMITS --bundle "$OUT/asv_results.tar" ${HISTORY_BENCH:+--bench "$HISTORY_BENCH"} ${MACHINE:+--machine "$MACHINE"} ${DEADLINE_S:+--deadline-s "$DEADLINE_S"}
    echo "gpu_asv.sh: $(echo $COMMITS | wc -w) commits in $(( $(date +%s) - start )) s"
fi
echo "gpu_asv.sh: total $(( $(date +%s) - start )) s"
