"""Training throughput (tokens/s) of one or more router configurations, each timed on its own.

    python train/bench_throughput.py --router-list softk,top1,aux-free --capacity-factors 1.25 \
        --compile --compile-mode reduce-overhead --device cuda --dim 256 --layers 4 --heads 4 \
        --seq-len 256 --batch-size 64 --num-experts 8 --top-k 2 --out runs/bench/bench.jsonl
    torchrun --standalone --nproc_per_node=2 train/bench_throughput.py --distributed ...   # DDP

Each configuration runs the real training step (data, forward, backward, clip, fused AdamW,
aux-free bias update; ``loop.bench``): ``--bench-warmup`` steps first (compilation), then
``--bench-repeats`` timed blocks of ``--bench-steps`` steps between device synchronisations; the
median block gives tokens/s (global tokens; no evaluation, no checkpoint). Every train.py flag
applies. Configurations run one after another in this process, so they never share the GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

import moe_routing_bench as mrb  # noqa: E402
from train import config as C  # noqa: E402

PROG = "bench_throughput.py"


@dataclasses.dataclass
class BenchListOptions:
    """Which configurations to time, and where the records go."""
    router_list: str | None = C.opt(None, "comma list of routers (default: --router)", type=str)
    capacity_factors: str | None = C.opt(None, "comma list, 'none' = dropless (default: --capacity-factor)", type=str)
    out: str | None = C.opt(None, "append one JSON record per configuration to this file "
                            "(e.g. runs/bench/bench.jsonl; default: print only)", type=str)


def build_parser() -> argparse.ArgumentParser:
    p = C.train_parser(__doc__.split("\n")[0], prog=PROG, epilog=__doc__.split("\n\n", 1)[1])
    C.add_flags(p.add_argument_group("configurations"), BenchListOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    from train.loop import bench
    from train.train import fatal_message

    parser = build_parser()
    try:
        preset = C.apply_presets(parser, argv, None)
        ns = parser.parse_args(argv)
        ns.bench = True
        cfg, _ = C.normalize(C.config_from_namespace(ns, preset))
        routers = [r.strip() for r in (ns.router_list or cfg.moe.router).split(",") if r.strip()]
        cfs = [c.strip() for c in (ns.capacity_factors or str(cfg.moe.capacity_factor)).split(",") if c.strip()]
        configs = []
        for router in routers:
            for cf in cfs:
                moe = dataclasses.replace(cfg.moe, router=router, capacity_factor=C.capacity_factor_arg(cf))
                configs.append(C.normalize(dataclasses.replace(cfg, moe=moe))[0])
    except (mrb.ConfigError, argparse.ArgumentTypeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    records, failed = [], 0
    main_rank = int(os.environ.get("RANK", "0")) == 0
    for c in configs:
        try:
            rec = bench(c)
        except Exception as e:  # one failing configuration does not stop the others
            failed += 1
            reason = fatal_message(e) or f"{type(e).__name__}: {e}"
            print(f"{PROG}: {c.moe.router} cf={c.moe.capacity_factor} failed: {reason}", file=sys.stderr)
            continue
        finally:
            import torch
            torch._dynamo.reset()
        records.append(rec)
        if ns.out and main_rank:
            mrb.append_jsonl(ns.out, [rec])
    if main_rank and records:
        print(f"{'router':<14}{'cf':>6}{'compile':>8}{'world':>6}  {'tokens/s':>12}  {'ms/step':>8}  {'TFLOP/s':>8}")
        for r in records:
            print(f"{r['router']:<14}{str(r['capacity_factor']):>6}{str(r['compile']):>8}{r['world_size']:>6}  "
                  f"{r['tokens_per_s']:>12,.0f}  {r['step_ms']:>8.2f}  {r['tflops']:>8.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
