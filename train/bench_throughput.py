"""Training throughput (tokens/s) of one or more router configurations, each timed on its own.

    python train/bench_throughput.py --router-list softk,top1,aux-free --capacity-factors 1.25 \
        --compile --compile-mode reduce-overhead --device cuda --dim 256 --layers 4 --heads 4 \
        --seq-len 256 --batch-size 64 --num-experts 8 --top-k 2 --out results/train/bench.jsonl
    torchrun --standalone --nproc_per_node=2 train/bench_throughput.py --distributed ...   # DDP

Each configuration runs ``train.py --bench``: the real training step (data, forward, backward, clip,
fused AdamW, aux-free bias update), ``--bench-warmup`` steps first (compilation), then
``--bench-repeats`` timed blocks of ``--bench-steps`` steps between device synchronisations; the
median block gives tokens/s (global tokens; no evaluation, no checkpoint). Any other flag is a
train.py flag. Configurations run one after another in this process, so they never share the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

from train import train as T  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=True)
    p.add_argument("--router-list", default=None, help="comma list of routers (default: train.py --router)")
    p.add_argument("--capacity-factors", default=None, help="comma list, 'none' = dropless (default: train.py's)")
    p.add_argument("--out", default=None, help="append one JSON record per configuration to this file")
    own, rest = p.parse_known_args(argv)
    routers = own.router_list.split(",") if own.router_list else [None]
    cfs = own.capacity_factors.split(",") if own.capacity_factors else [None]
    records, failed = [], 0
    for router in routers:
        for cf in cfs:
            argv_run = ["--bench", *rest]
            if router:
                argv_run += ["--router", router.strip()]
            if cf:
                argv_run += ["--capacity-factor", cf.strip()]
            try:
                args, notes = T.normalize_args(T.build_parser().parse_args(argv_run))
                rec = T.bench(args)
            except Exception as e:  # one failing configuration does not stop the others
                failed += 1
                print(f"bench_throughput: {router} cf={cf} failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            finally:
                import torch
                torch._dynamo.reset()
            records.append(rec)
            if own.out and int(os.environ.get("RANK", "0")) == 0:
                Path(own.out).parent.mkdir(parents=True, exist_ok=True)
                with open(own.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    if int(os.environ.get("RANK", "0")) == 0 and records:
        print(f"{'router':<14}{'cf':>6}{'compile':>8}{'world':>6}  {'tokens/s':>12}  {'ms/step':>8}  {'TFLOP/s':>8}")
        for r in records:
            print(f"{r['router']:<14}{str(r['capacity_factor']):>6}{str(r['compile']):>8}{r['world_size']:>6}  "
                  f"{r['tokens_per_s']:>12,.0f}  {r['step_ms']:>8.2f}  {r['tflops']:>8.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
