#!/usr/bin/env bash
# Issue 16 on one H200: the kernel tests (about 330 s on a fresh machine with 8 xdist workers: more than
# tools/gpu_kernels.py's own pytest step allows), then every target (about 100 s with a tune cache, 300 s
# without). Two calls of the device tool, or one with TESTS=0:
#   MOE_BENCH_GIT_COMMIT=<sha> OUT=<dir> bash results/gpu/h200/kernels/next_call.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ "${TESTS:-1}" = 1 ]; then
  timeout 420 python3 -m pytest -q -p no:cacheprovider -rfEs -n 8 tests/test_kernels.py tests/test_fused_experts.py \
    tests/test_router_matmul.py > $OUT/pytest_gpu.log 2>&1
  echo "pytest rc=$?"; tail -n 3 $OUT/pytest_gpu.log
fi
if [ "${MEASURE:-1}" = 1 ]; then
  python3 tools/gpu_kernels.py --skip-tests --out $OUT/kernels --commit "$MOE_BENCH_GIT_COMMIT" --budget-s ${BUDGET_S:-400}
fi
