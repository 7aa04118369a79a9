"""Where a training step's time goes, per router: host time, device kernel time, kernel counts.

    PYTHONPATH=. python3 tools/gpu_train_profile.py --routers softk,top1,aux-free --out $OUT/profile \
        -- --compile --device cuda --dim 256 --layers 4 --heads 4 --seq-len 256 --batch-size 64 \
           --num-experts 8 --top-k 2 --capacity-factor 1.25

Arguments after `--` are train.py flags. Each router: `--warmup` steps (compilation), `--steps`
steps timed by `moe_routing_bench.measure` (device time per step), `--steps` more timed on the host
without synchronising (issue time), then `--profile-steps` under torch.profiler. Writes per router a JSON
summary (host ms/step, summed kernel ms/step, kernels/step, the busiest kernels) and a
key_averages table; prints one line per router. A diagnostic tool, not a benchmark.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import moe_routing_bench as mrb  # noqa: E402

from train.config import parse_train_args  # noqa: E402
from train.trainer import Trainer, setup_distributed, sync  # noqa: E402


def profile_router(router: str, train_argv: list[str], warmup: int, steps: int, profile_steps: int) -> dict:
    cfg, _ = parse_train_args(["--bench", *train_argv, "--router", router])
    ctx = setup_distributed(cfg.run.device, cfg.run.distributed, cfg.run.dist_backend)
    run = Trainer(cfg, ctx)
    # measure (CUDA events around each step, all queued ahead; no L2 flush) for the device view,
    # then perf_counter around each call without a synchronize for the host's issue time
    step = mrb.measure(run.train_step, ctx.device, warmup=warmup, iters=steps, flush_l2=False, warmup_s=None)
    host_issue = mrb.measure(run.train_step, "cpu", warmup=0, iters=steps)  # the host may run ahead
    sync(ctx.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(profile_steps):
            run.train_step()
        sync(ctx.device)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    busiest = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:25]
    rec = {
        "router": router, "top_k": run.model_cfg.top_k, "tokens_per_step": run.tokens_per_step,
        "wall_ms_per_step": 1e3 * step.mean_s, "host_issue_ms_per_step": 1e3 * host_issue.mean_s,
        "tokens_per_s": run.tokens_per_step / step.mean_s,  # tokens of the timed steps / their summed time
        "kernel_ms_per_step": kernel_us / 1e3 / profile_steps, "kernels_per_step": launches / profile_steps,
        "busiest": [{"name": e.key[:120], "count_per_step": e.count / profile_steps,
                     "us_per_step": e.self_device_time_total / profile_steps} for e in busiest],
        "device": torch.cuda.get_device_name(0) if ctx.device.type == "cuda" else "cpu",
    }
    table = events.table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=100)
    return rec, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--routers", default="softk,top1,aux-free")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    own, rest = p.parse_known_args()
    rest = [a for a in rest if a != "--"]
    own.out.mkdir(parents=True, exist_ok=True)
    for router in own.routers.split(","):
        rec, table = profile_router(router, rest, own.warmup, own.steps, own.profile_steps)
        (own.out / f"{router}.json").write_text(json.dumps(rec, indent=1))
        (own.out / f"{router}_table.txt").write_text(table)
        print(f"{router:10s} k={rec['top_k']} {rec['tokens_per_s']:12,.0f} tok/s  wall {rec['wall_ms_per_step']:.2f} ms/step"
              f"  host-issue {rec['host_issue_ms_per_step']:.2f}  kernels {rec['kernel_ms_per_step']:.2f} ms"
              f" ({rec['kernels_per_step']:.0f}/step)", flush=True)
        for b in rec["busiest"][:12]:
            print(f"    {b['us_per_step']:9.1f} us  x{b['count_per_step']:5.1f}  {b['name']}")
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
