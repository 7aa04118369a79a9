#!/usr/bin/env bash
# Every seed README benchmark at the seed's sizes on the GPU, records in $OUT/seed_gpu.jsonl.
# Usage on the GPU machine, from the repo root: OUT=/some/dir bash tools/gpu_seed.sh [backends]
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-results/gpu}
B=${1:-all}
R=$OUT/seed_gpu.jsonl
mb() { echo "### moe-bench $*"; python3 -m moe_routing_bench.cli "$@" --out "$R" || echo "FAILED: $*"; }
python3 -m moe_routing_bench.cli env --out "$OUT/env.jsonl"
mb bench-topk --impl torch --backend "$B" --num-tokens 16384 --num-experts 128 --top-k 2 --hidden-dim 4096 --iters 200 --dtype bfloat16
mb bench-routing --impl-topk torch --backend "$B" --num-tokens 16384 --num-experts 128 --top-k 2 --hidden-dim 4096 --iters 100 --dtype bfloat16
mb bench-pack --backend "$B" --num-tokens 16384 --hidden-dim 4096 --num-experts 128 --top-k 2 --iters 100 --dtype bfloat16
mb bench-pack-only --backend "$B" --num-tokens 16384 --hidden-dim 4096 --num-experts 128 --top-k 2 --iters 100 --dtype bfloat16
mb bench-combine-only --backend "$B" --num-tokens 16384 --hidden-dim 4096 --num-experts 128 --top-k 2 --iters 100 --dtype bfloat16
mb bench-moe-layer --backend "$B" --num-tokens 8192 --hidden-dim 1024 --num-experts 32 --top-k 2 --expand 4 --dtype bfloat16
mb sweep-pack --backend "${SWEEP_BACKENDS:-torch,triton}" --tokens 8192,16384 --hidden 2048,4096 --experts 32,64 --topk 1,2
mb sweep-capacity --backend "${SWEEP_BACKENDS:-torch,triton}" --experts 32,64 --topk 1,2,4 --capacity-factors 1.0,1.25 --strategy softk
mb bench-capacity --backend "${SWEEP_BACKENDS:-torch,triton}" --num-tokens 16384 --hidden-dim 4096 --num-experts 128 --top-k 2 --capacity-factors 1.00,1.10,1.25,1.50 --iters 50
