#!/usr/bin/env bash
# Issue 16, the next H200 call (about 6 minutes): the kernels and layers against the targets (the
# layer's default path, where the router and GELU changes act, comes right after the main routing
# shape), then the plan's smaller blocks (NOTES.md, "Next to try"). The router matmul and GELU tests
# passed on the H200 at 06ae463 (run2_06ae463/pytest_router_gelu.log); rerun them first
# (PYTEST=1) when that code has changed since.
#   MOE_BENCH_GIT_COMMIT=<sha> OUT=<dir> bash results/gpu/h200/kernels/next_call.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ "${PYTEST:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_router_matmul.py tests/test_kernels.py -k "router_matmul or gelu" \
    > $OUT/pytest_router_gelu.log 2>&1
  echo "pytest rc=$?"; tail -n 3 $OUT/pytest_router_gelu.log
fi
python3 tools/gpu_kernels.py --skip-tests --out $OUT/kernels --commit "$MOE_BENCH_GIT_COMMIT" --budget-s ${BUDGET_S:-400}
MRB_TUNE_CACHE=$OUT/kernels/tune timeout 90 python3 results/gpu/h200/kernels/ceilings_8a5a96d/plan16.py > $OUT/plan16.jsonl 2>&1
echo "plan16 rc=$?"; tail -n 3 $OUT/plan16.jsonl
