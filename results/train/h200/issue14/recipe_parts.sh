#!/usr/bin/env bash
# Issue 14, after grid (c): which part of this project's training recipe costs softk and top1 against
# the older tool's recipe? Base: grid (b) (--preset seed-budget, our semantics and recipe) at cf 1.25;
# each sweep switches one part of the recipe to the older tool's value (train/config.py RECIPE).
# All five sweeps share the GPU at once (CUDA MPS), one CPU thread per run.
# Usage (device): DATA=... MOE_BENCH_GIT_COMMIT=<sha> OUT=$OUT bash results/train/h200/issue14/recipe_parts.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1
OUT=${OUT:-out}; DATA=${DATA:-data/tinystories_val.txt}; WORK=runs/recipe_parts
mkdir -p $OUT $WORK /tmp/mps /tmp/mps_log
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
nvidia-cuda-mps-control -d
declare -A PART=(
  [optimizer]="--beta2 0.999 --decay-all --warmup-steps 50"
  [router_init]="--router-bias --router-init-std 0.0625"
  [renorm]="--renorm-after-drop"
  [no_z_loss]="--z-loss-beta 0.0"
  [mha]="--attention mha"
)
for part in "${!PART[@]}"; do
  python3 train/sweep.py --preset seed-budget --router-list softk,top1 --capacity-factors 1.25 --data $DATA \
    --compile --runs-per-gpu 3 --deadline-s ${DEADLINE:-420} ${PART[$part]} --outdir-root $WORK/$part \
    > $OUT/recipe_$part.log 2>&1 &
done
wait
echo quit | nvidia-cuda-mps-control
grep -h "^sweep:" $OUT/recipe_*.log
(cd $WORK && grep -l '"done": true' */*/train_log.jsonl | xargs -r -n1 dirname > /tmp/finished.txt)
tar czf $OUT/recipe_parts.tar.gz --exclude='ckpt*' --exclude=.lock -C $WORK -T /tmp/finished.txt
