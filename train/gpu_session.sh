#!/usr/bin/env bash
# GPU measurements of the training harness, as run on the lent H100 machines (results/train/).
#   bash train/gpu_session.sh validate   # 1 GPU: throughput benchmark (a), train+kill+resume smoke of every router
#   bash train/gpu_session.sh sweep      # 2 GPUs: 1-vs-2-GPU scaling (c), routing sweep (b), exclusive benches
#   bash train/gpu_session.sh graphs     # 1 GPU: every router, compiled default vs CUDA graphs (reduce-overhead),
#                                        # timed alone; a CUDA-graph training run with eval, checkpoint, resume
#   bash train/gpu_session.sh grids      # 1 GPU: issue 14's grids (train/README.md), resumable across
#                                        # time-limited calls; GRIDS, RPG, RPG_LONG, DEADLINE, ROOT, EXTRA, MPS (see the mode)
# Needs data/tinystories_val.txt (copy of the TinyStories validation split) and writes under $OUT.
set -u
MODE=${1:-validate}
OUT=${OUT:-out}
export PYTHONPATH=. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PY:-python3}
W=/tmp/w
mkdir -p "$W" "$OUT"
DATA=${DATA:-data/tinystories_val.txt}
# the model of the targets: E=8, k=2, dim 256, 4 layers, 4 heads, seq 256, batch 64 per GPU (16,384 tokens)
M="--device cuda --data $DATA --dim 256 --layers 4 --heads 4 --seq-len 256 --num-experts 8 --top-k 2 --dtype bf16"
ROUTERS=top1,topk-hard,softk,hash,expert-choice,aux-free
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

nvidia-smi -L
$PY -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0], torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPUs')"

if [ "$MODE" = validate ]; then
  # (a) compiled softk/top1/aux-free + eager softk: compile side by side, then timed one at a time
  for r in softk top1 aux-free; do
    timeout 300 $PY train/train.py --bench --compile $M --batch-size 64 --capacity-factor 1.25 --router $r --bench-warmup 30 \
      --bench-steps 50 --bench-repeats 5 --bench-sync-dir $W/bsync --bench-group 4 --bench-out $W/bench_$r.json \
      > $W/bench_$r.log 2>&1 &
  done
  timeout 300 $PY train/train.py --bench $M --batch-size 64 --capacity-factor 1.25 --router softk --bench-warmup 10 --bench-steps 30 \
    --bench-repeats 3 --bench-sync-dir $W/bsync --bench-group 4 --bench-out $W/bench_softk_eager.json \
    > $W/bench_softk_eager.log 2>&1 &
  wait
  stamp "benchmarks done"
  cp $W/bench_*.json $OUT/ 2>/dev/null
  grep -h "\[bench\]" $W/bench_*.log
  tail -n 3 $W/bench_*.log | grep -i -E "error|Traceback" && tail -n 30 $W/bench_*.log
  # every router on the GPU, compiled: the sweep stopped (SIGTERM ends its runs) after 150 s, then resumed by a rerun
  S="--data $DATA --seq-len 256 --batch-per-gpu 64 --dim 256 --layers 4 --heads 4 --num-experts-list 8 \
     --router-list $ROUTERS --topk-list 2 --capacity-factors 1.25 --seeds 17 --max-steps 120 --eval-interval 30 \
     --log-interval 10 --lr 1e-3 --warmup-steps 30 --compile --runs-per-gpu 6 --outdir-root $W/smoke --keep-checkpoints"
  timeout -s TERM 150 $PY train/sweep.py $S
  stamp "stopped pass rc=$?"
  timeout 200 $PY train/sweep.py $S
  stamp "resumed pass rc=$?"
  grep -h "resumed\|Traceback\|Error" $W/smoke/*/stdout.log | sort | uniq -c | head -20
  cp $W/bench_*.json $OUT/ 2>/dev/null
  tar czf $OUT/validate_logs.tar.gz -C $W --exclude='*.pt' bench_softk.log bench_top1.log bench_aux-free.log bench_softk_eager.log smoke
  stamp "validate done"
fi

if [ "$MODE" = sweep ]; then
  STEPS=${STEPS:-300}
  RPG=${RPG:-6}
  # (c) scaling: the same per-GPU batch on 1 GPU, then DDP on 2 (NCCL), softk compiled, timed alone
  B="--bench --compile $M --batch-size 64 --capacity-factor 1.25 --router softk --bench-warmup 30 --bench-steps 50 --bench-repeats 5"
  CUDA_VISIBLE_DEVICES=0 timeout 150 $PY train/train.py $B --bench-out $W/scale_1gpu.json > $W/scale_1gpu.log 2>&1
  stamp "1-GPU bench rc=$?"
  timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node=2 train/train.py --distributed $B \
    --bench-out $W/scale_2gpu.json > $W/scale_2gpu.log 2>&1
  stamp "2-GPU bench rc=$?"
  grep -h "\[bench\]" $W/scale_*.log
  $PY - <<'EOF2'
import json
one, two = (json.load(open(f"/tmp/w/scale_{n}gpu.json")) for n in (1, 2))
eff = two["tokens_per_s"] / (2 * one["tokens_per_s"])
rec = {"scaling": True, "gpus": 2, "tokens_per_s_1gpu": one["tokens_per_s"], "tokens_per_s_2gpu": two["tokens_per_s"],
       "efficiency": eff, "device_name": one["device_name"], "per_gpu_batch_tokens": one["tokens_per_step"],
       "one_gpu": one, "two_gpu": two}
json.dump(rec, open("/tmp/w/scaling.json", "w"), indent=2)
print("scaling efficiency", round(eff, 4), json.dumps({k: v for k, v in rec.items() if k not in ("one_gpu", "two_gpu")}))
EOF2
  cp $W/scaling.json $OUT/ 2>/dev/null
  # a compiled GPU run SIGKILLed after 90 s (past its first checkpoints), then resumed (alongside the sweep)
  R="--compile $M --batch-size 64 --router aux-free --capacity-factor 1.25 --max-steps 100 --eval-interval 25 --outdir $W/resume"
  (CUDA_VISIBLE_DEVICES=1 timeout -s KILL 90 $PY train/train.py $R; echo "killed rc=$?"; \
   CUDA_VISIBLE_DEVICES=1 $PY train/train.py $R; echo "resumed rc=$?") > $W/resume.log 2>&1 &
  # (b) the sweep: 6 routers x cf {1.0, 1.25} x 3 seeds, runs placed on both GPUs, RPG per GPU
  timeout 320 $PY train/sweep.py --data $DATA --seq-len 256 --batch-per-gpu 64 --dim 256 --layers 4 --heads 4 \
    --num-experts-list 8 --router-list $ROUTERS --topk-list 2 --capacity-factors 1.0,1.25 --seeds 17,18,19 \
    --max-steps $STEPS --eval-interval 100 --log-interval 25 --eval-batches 20 --lr 1e-3 --warmup-steps 30 \
    --compile --runs-per-gpu $RPG --outdir-root $W/sweep
  stamp "sweep rc=$?"
  wait
  tail -n 4 $W/resume.log
  tar czf $OUT/sweep_logs.tar.gz -C $W --exclude='*.pt' sweep scale_1gpu.json scale_2gpu.json scale_1gpu.log \
    scale_2gpu.log resume resume.log
  # exclusive-GPU throughput of each configuration (torch.compile cache warm from the sweep), one process per GPU
  (CUDA_VISIBLE_DEVICES=0 timeout 170 $PY train/bench_throughput.py --router-list top1,softk --capacity-factors 1.0,1.25,none \
    --compile $M --batch-size 64 --bench-warmup 20 --bench-steps 50 --bench-repeats 3 --out $W/bench_configs.jsonl; \
   if [ -f data/exp_spread_dispatch.py ]; then  # what-if for the core: no atomics piled on one row in backward
     CUDA_VISIBLE_DEVICES=0 timeout 100 $PY data/exp_spread_dispatch.py --patched --bench --compile $M --batch-size 64 \
       --router top1 --capacity-factor 1.25 --bench-warmup 20 --bench-steps 50 --bench-repeats 3 --bench-out $W/whatif_top1.json; fi \
  ) > $W/bench_configs_0.log 2>&1 &
  CUDA_VISIBLE_DEVICES=1 timeout 170 $PY train/bench_throughput.py --router-list topk-hard,hash,expert-choice,aux-free \
    --capacity-factors 1.0,1.25 --compile $M --batch-size 64 --bench-warmup 20 --bench-steps 50 --bench-repeats 3 \
    --out $W/bench_configs.jsonl > $W/bench_configs_1.log 2>&1 &
  wait
  stamp "config benches done"
  grep -h -A10 "^router " $W/bench_configs_*.log
  grep -h "\[bench\]" $W/bench_configs_0.log | tail -n 1
  cat $W/whatif_top1.json >> $W/bench_configs_whatif.json 2>/dev/null
  cp $W/bench_configs.jsonl $OUT/ 2>/dev/null
  tar czf $OUT/bench_logs.tar.gz -C $W bench_configs_0.log bench_configs_1.log $(cd $W; ls whatif_top1.json 2>/dev/null)
  $PY train/summarize.py --runs "$W/sweep/*" --out $OUT/routing_sweep_summary.csv --bench $W/bench_configs.jsonl
  stamp "sweep mode done"
fi

if [ "$MODE" = bench ]; then
  # every configuration of the sweep timed alone on one GPU: all compile side by side, then each takes
  # the lock in turn (the others wait idle); plus what-ifs: the spread-row dispatch patch, CUDA graphs
  G=15
  for r in top1 topk-hard softk hash expert-choice aux-free; do for cf in 1.0 1.25; do
    timeout 280 $PY train/train.py --bench --compile $M --batch-size 64 --router $r --capacity-factor $cf \
      --bench-warmup 20 --bench-steps 50 --bench-repeats 3 --bench-sync-dir $W/s --bench-group $G \
      --bench-out $W/b_${r}_$cf.json > $W/b_${r}_$cf.log 2>&1 &
  done; done
  for r in top1 softk; do
    timeout 280 $PY data/exp_spread_dispatch.py --patched --bench --compile $M --batch-size 64 --router $r \
      --capacity-factor 1.25 --bench-warmup 20 --bench-steps 50 --bench-repeats 3 --bench-sync-dir $W/s \
      --bench-group $G --bench-out $W/whatif_spread_${r}_1.25.json > $W/whatif_spread_$r.log 2>&1 &
  done
  timeout 280 $PY train/train.py --bench --compile --compile-mode reduce-overhead $M --batch-size 64 --router softk \
    --capacity-factor 1.25 --bench-warmup 20 --bench-steps 50 --bench-repeats 3 --bench-sync-dir $W/s \
    --bench-group $G --bench-out $W/whatif_cudagraphs_softk_1.25.json > $W/whatif_cudagraphs.log 2>&1 &
  wait
  stamp "benches done"
  grep -h "\[bench\]" $W/*.log
  grep -l -E "Traceback|Error" $W/*.log && grep -h -B2 -A3 -E "Error" $W/*.log | tail -n 20
  cat $W/b_*.json | $PY -c "import json,sys; d=sys.stdin.read(); print(d)" > /dev/null
  for f in $W/b_*.json; do $PY -c "import json; print(json.dumps(json.load(open('$f'))))" >> $OUT/bench_exclusive.jsonl; done
  for f in $W/whatif_*.json; do $PY -c "import json; print(json.dumps(json.load(open('$f'))))" >> $OUT/bench_whatif.jsonl; done
  tar czf $OUT/bench_exclusive_logs.tar.gz -C $W $(cd $W; ls *.log)
  stamp "bench mode done"
fi

if [ "$MODE" = graphs ]; then
  # every router at cf 1.25, compile mode default and reduce-overhead (CUDA graphs): all compile side by
  # side, then each takes the lock in turn and is timed alone
  G=12
  for r in top1 topk-hard softk hash expert-choice aux-free; do for mode in default reduce-overhead; do
    timeout 300 $PY train/train.py --bench --compile --compile-mode $mode $M --batch-size 64 --router $r \
      --capacity-factor 1.25 --bench-warmup 30 --bench-steps 50 --bench-repeats 5 --bench-sync-dir $W/g \
      --bench-group $G --bench-out $W/g_${r}_$mode.json > $W/g_${r}_$mode.log 2>&1 &
  done; done
  wait
  stamp "benches done"
  grep -h "\[bench\]" $W/g_*.log
  grep -l -E "Traceback|Error" $W/g_*.log && grep -h -B2 -A3 -E "Error" $W/g_*.log | tail -n 20
  for f in $W/g_*.json; do $PY -c "import json; print(json.dumps(json.load(open('$f'))))" >> $OUT/bench_graphs.jsonl; done
  # the training loop (eval, logging, checkpoints) under CUDA graphs: SIGKILLed after 90 s, resumed to 80
  R="--compile --compile-mode reduce-overhead $M --batch-size 64 --router aux-free --capacity-factor 1.25 \
     --max-steps 80 --eval-interval 20 --eval-batches 10 --outdir $W/graphs_run"
  timeout -s KILL 90 $PY train/train.py $R > $W/graphs_run.log 2>&1; echo "killed rc=$?" >> $W/graphs_run.log
  timeout 200 $PY train/train.py $R >> $W/graphs_run.log 2>&1; echo "resumed rc=$?" >> $W/graphs_run.log
  tail -n 6 $W/graphs_run.log
  tar czf $OUT/graphs_logs.tar.gz -C $W --exclude='*.pt' $(cd $W; ls g_*.log) graphs_run.log graphs_run
  stamp "graphs mode done"
fi

if [ "$MODE" = grids ]; then
  # issue 14's grids, in order, under one time limit: no run starts that would end after DEADLINE s
  # (counted from here). The sweeps work in WORK (git-ignored, so it stays on a machine kept warm
  # between calls, checkpoints of a run cut off included), seeded with ROOT's finished runs; the
  # finished run folders (no checkpoints) come back as $OUT/grids.tar.gz, to be unpacked into ROOT.
  ROOT=${ROOT:-results/train/h200/issue14/runs}
  WORK=${WORK:-runs/issue14}
  GRIDS=${GRIDS:-ours_b,seed_a_flips,ours_b_long}
  # runs at once, under the CUDA MPS daemon (the runs' kernels share the GPU instead of taking turns in
  # time slices), one CPU thread each (sweep.py): 12 summed ~9 M tokens/s on an H200, one alone 2.1 M
  RPG=${RPG:-12}; RPG_LONG=${RPG_LONG:-12}; MPS=${MPS:-1}
  DEADLINE=${DEADLINE:-540}
  mkdir -p $WORK && cp -rn $ROOT/. $WORK/
  if [ "$MPS" = 1 ]; then
    mkdir -p /tmp/mps /tmp/mps_log
    if CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log nvidia-cuda-mps-control -d; then
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
      stamp "MPS daemon started"
    else
      MPS=0; stamp "MPS daemon did not start: the runs take turns on the GPU"
    fi
  fi
  for grid in ${GRIDS//,/ }; do
    left=$(( DEADLINE - $(date +%s) + t0 ))
    [ $left -gt 60 ] || break
    R=$RPG
    case $grid in
      seed_a) A="--preset seed --outdir-root $WORK/seed_a" ;;
      seed_a_flips) A="--preset seed --outdir-root $WORK/seed_a --flip-list top1_gate,topk_hard_weights,hash_key,balance_loss,recipe" ;;
      ours_b) A="--preset seed-budget --outdir-root $WORK/ours_b" ;;
      ours_b_long) A="--preset seed-budget --max-steps 4800 --router-list softk,top1,aux-free,expert-choice \
                      --capacity-factors 1.25 --outdir-root $WORK/ours_b_long"
                   R=$RPG_LONG ;;
      *) echo "unknown grid $grid"; exit 2 ;;
    esac
    # EXTRA: more sweep flags, e.g. --compile-mode reduce-overhead
    $PY train/sweep.py $A --data $DATA --compile --runs-per-gpu $R ${EXTRA:-} --deadline-s $left > $OUT/$grid.log 2>&1
    stamp "$grid rc=$?"; grep -E "^sweep:" $OUT/$grid.log
  done
  [ "$MPS" = 1 ] && echo quit | nvidia-cuda-mps-control
  # finished runs only: a run cut off half-way would come back without the checkpoint it resumes from
  (cd $WORK && grep -l '"done": true' */*/train_log.jsonl | xargs -r -n1 dirname > /tmp/finished.txt)
  tar czf $OUT/grids.tar.gz --exclude='ckpt*' --exclude=.lock -C $WORK -T /tmp/finished.txt
  stamp "grids mode done"
fi
