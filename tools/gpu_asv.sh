#!/usr/bin/env bash
# The asv suites on a GPU machine, in asv's existing-environment mode (DESIGN section 8: the GPU
# machines have torch and no network; asv comes from the .whl/ wheelhouse, tools/asv_wheelhouse.sh).
#
#   bash tools/gpu_asv.sh                         # from the repository root: results/asv/<machine>/
#   COMMIT=<hash> OUT=/dir bash tools/gpu_asv.sh  # a copy without git history; results also in $OUT/asv/
#
# Environment: COMMIT (default HEAD; required where the copy has no git history), PYTHON (default
# python3), BENCH (asv -b regex; default the GPU methods of the suites, '^bench_.*\.track_'),
# MACHINE (default: named after the GPU, e.g. nvidia-h100-80gb-hbm3), OUT (merge results into $OUT/asv;
# run it once per BENCH subset where one run would not fit a time limit).
# Keep one stable interpreter path per machine: asv names the environment after it, and a new name
# starts a new history line on the dashboard. Back home: python -m moe_routing_bench.suite.store
# import-results <OUT>/asv --commit <hash>  (merges into results/asv; then commit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="$(command -v "${PYTHON:-python3}")"
BENCH="${BENCH:-^bench_.*\.track_}"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import asv" 2>/dev/null; then
    [ -d .whl ] || { echo "gpu_asv.sh: no asv and no .whl/ wheelhouse (tools/asv_wheelhouse.sh makes one)" >&2; exit 2; }
    "$PY" -m pip install --quiet --no-index --find-links .whl asv==0.6.6
fi
# asv clears PYTHONPATH for the benchmark processes; ASV_PYTHONPATH is what it passes instead
export ASV_PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$ASV_PYTHONPATH"

# ~/.asv-machine.json: asv's description of this host plus gpu, cuda, torch_version, triton_version
MACHINE="$("$PY" -m moe_routing_bench.suite.store machine ${MACHINE:+--name "$MACHINE"})"
COMMIT="${COMMIT:-$(git rev-parse -q --verify HEAD 2>/dev/null || true)}"
if [ -z "$COMMIT" ]; then
    echo "gpu_asv.sh: this copy has no git history: COMMIT=<the tree's commit hash> bash tools/gpu_asv.sh" >&2
    exit 2
fi
echo "gpu_asv.sh: machine $MACHINE, commit $COMMIT, benchmarks /$BENCH/ (the working tree, measured as $COMMIT)"
# spawn: a fresh interpreter per benchmark process, CUDA initialised only there; one process per
# benchmark (track_* take 100 timed repetitions themselves; asv's default of 2 doubles a ~10 min run)
RUN=(-m asv run -E "existing:$PY" --machine "$MACHINE" --launch-method spawn -b "$BENCH" --show-stderr -a processes=1)
if git cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
    RESULTS=results/asv
    "$PY" "${RUN[@]}" --set-commit-hash "$COMMIT"
else
    # A copy without the history (as the GPU lease machines get): asv wants the commit in a repo,
    # so run against a one-commit stand-in repository, then relabel the results with $COMMIT.
    STAND="$(mktemp -d)"
    git init -q "$STAND"
    git -C "$STAND" checkout -q -b main
    git -C "$STAND" -c user.name=gpu_asv -c user.email=gpu_asv@localhost commit -q --allow-empty -m stand-in
    "$PY" -c '
import json, sys
from pathlib import Path
from moe_routing_bench.suite.dashboard import read_asv_config
stand = Path(sys.argv[1])
conf = read_asv_config("asv.conf.json")
conf.update(repo=str(stand), benchmark_dir=str(Path("benchmarks").resolve()), results_dir=str(stand / "results"),
            html_dir=str(stand / "html"), env_dir=str(stand / "env"))
(stand / "asv.conf.json").write_text(json.dumps(conf))
' "$STAND"
    "$PY" "${RUN[@]}" --config "$STAND/asv.conf.json" --set-commit-hash "$(git -C "$STAND" rev-parse HEAD)"
    RESULTS="$STAND/relabelled"
    "$PY" -m moe_routing_bench.suite.store import-results "$STAND/results" --results-dir "$RESULTS" --commit "$COMMIT"
    "$PY" -m moe_routing_bench.suite.store import-results "$RESULTS"  # and into results/asv here
fi

if [ -n "${OUT:-}" ]; then
    # this run's files only (results/asv holds the whole store); merged, not copied: several runs
    # (one per BENCH subset, each within a time limit) add up there
    NEW="$(mktemp -d)"
    mkdir -p "$NEW/$MACHINE"
    cp "$RESULTS/$MACHINE/machine.json" "$RESULTS/$MACHINE/${COMMIT:0:8}"-existing-*.json "$NEW/$MACHINE/"
    "$PY" -m moe_routing_bench.suite.store import-results "$NEW" --results-dir "$OUT/asv" >/dev/null
    echo "gpu_asv.sh: merged into $OUT/asv/$MACHINE/; where it comes back:"
    echo "    python -m moe_routing_bench.suite.store import-results <that folder>/asv --commit $COMMIT"
fi
