"""Session 9 diagnostics on one H200 (issue 16): where top-k's 11 us go, the plan's two launches, and the
E8 unfused layer's 1.57 ms of kernel-free time (host syncs? CPU-bound stretches?). JSON lines on stdout."""
import json
import os
import sys
import time
import traceback
import warnings

import torch
import triton
from triton.testing import do_bench_cudagraph

import moe_routing_bench as mrb
from moe_routing_bench.routing.backends._triton import topk_kernels as tk
from moe_routing_bench.routing.backends._triton import plan_kernels as pk
from moe_routing_bench.routing.backends._triton.launch import next_pow2

OUT = os.environ["OUT"]
dev = "cuda"


def emit(**r):
    print(json.dumps(r), flush=True)


emit(what="copy_GBps", value=mrb.copy_bandwidth(dev) / 1e9)

# ---------------------------------------------------------------- A. top-k kernel variants (main shape)
T, E, K = 16384, 128, 2
g = torch.Generator(device=dev).manual_seed(0)
logits = torch.randn(T, E, device=dev, generator=g)
ids = torch.empty(T, K, dtype=torch.int64, device=dev)
w = torch.empty(T, K, dtype=torch.float32, device=dev)
probs = torch.empty(T, E, dtype=torch.float32, device=dev)
hist = torch.empty(T, E, dtype=torch.int32, device=dev)
dst = torch.empty_like(logits)
emit(what="copy_8MB_us", value=do_bench_cudagraph(lambda: dst.copy_(logits)) * 1e3)
for bt in (8, 16, 32, 64, 128):
    for warps in (1, 2, 4, 8):
        for wp, wh in ((True, True), (True, False), (False, False)):
            def f():
                tk._route_kernel[(triton.cdiv(T, bt),)](
                    logits, w, ids, w, probs, hist, T, E, logits.stride(0), 1.0,
                    K=K, K_PAD=2, MODE=2, HAS_BIAS=False, WRITE_PROBS=wp, ACCURATE_EXP=True, WRITE_HIST=wh,
                    BLOCK_T=bt, BLOCK_E=128, num_warps=warps)
            try:
                f()
                us = do_bench_cudagraph(f) * 1e3
            except Exception as e:  # noqa: BLE001
                us = None
            emit(what="topk", block_t=bt, warps=warps, probs=wp, hist=wh, us=us)

# ---------------------------------------------------------------- B. plan launches, per kernel
from torch.profiler import ProfilerActivity, profile  # noqa: E402

ids_, w_, probs_, (h_, hbt) = tk.route_topk(logits, 2, K, write_hist=True)
for cfg in ((64, 64, 4, True, True), (64, 32, 4, True, True), (64, 32, 2, True, True), (32, 32, 2, True, True),
            (128, 64, 4, True, True)):
    def p(cfg=cfg):
        return pk.plan_tensors(ids_, w_, None, E, None, "position", False, "ragged", config=cfg, block_hist=(h_, hbt))
    try:
        p()
        us = do_bench_cudagraph(p) * 1e3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                p()
            torch.cuda.synchronize()
        per = {e.key[:40]: round(e.self_device_time_total / 20, 2) for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA}
    except Exception as e:  # noqa: BLE001
        us, per = None, repr(e)[:300]
    emit(what="plan", cfg=cfg, router_block_t=hbt, graph_us=us, kernels_us=per)


def route_plan():
    i, ww, pr, (hh, bt) = tk.route_topk(logits, 2, K, write_hist=True)
    return pk.plan_tensors(i, ww, None, E, None, "position", False, "ragged", config=(64, 32, 4, True, True),
                           block_hist=(hh, bt))


emit(what="topk+plan graph (64x32 plan, tuned topk)", us=do_bench_cudagraph(route_plan) * 1e3)

# ---------------------------------------------------------------- C. E8 unfused layer: syncs and gaps
T, H, F, E, K = 16384, 2048, 8192, 8, 2
torch.manual_seed(0)
with torch.device(dev):
    lay = mrb.MoELayer(mrb.MoEConfig(H, F, E, K, strategy="softk", backend="triton", capacity_factor=None))
lay.to(torch.bfloat16)
x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16).requires_grad_()
go = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
tok = torch.arange(T, device=dev)


def fwd_bwd():
    lay.zero_grad(set_to_none=True)
    x.grad = None
    out, aux = lay(x, tok)
    torch.autograd.backward([out, aux.balance_loss], [go, torch.ones_like(aux.balance_loss)])


t0 = time.time()
fwd_bwd()
torch.cuda.synchronize()
emit(what="layer first call s", value=time.time() - t0)
for _ in range(3):
    fwd_bwd()
torch.cuda.synchronize()

syncs = []


def show(message, category, filename, lineno, file=None, line=None):
    syncs.append((str(message)[:120], "".join(traceback.format_stack(limit=14)[:-1])))


old = warnings.showwarning
warnings.showwarning = show
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.showwarning = show
    fwd_bwd()
torch.cuda.set_sync_debug_mode(0)
warnings.showwarning = old
emit(what="syncs in one fwd_bwd", count=len(syncs))
for m, s in syncs:
    print("SYNC:", m, "\n", s, flush=True)

t = mrb.measure(fwd_bwd, dev, warmup=2, iters=10, flush_l2=False)
emit(what="layer fwd_bwd ms", value=t.median_s * 1e3)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(2):
        fwd_bwd()
    torch.cuda.synchronize()
prof.export_chrome_trace(f"{OUT}/layer_e8_trace.json")
ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0]
ev.sort(key=lambda e: e.time_range.start)
gaps, busy, end = [], 0.0, None
for a, b in zip(ev, ev[1:]):
    gap = b.time_range.start - max(a.time_range.end, end or 0)
    end = max(a.time_range.end, end or 0)
    if gap > 20:
        gaps.append((gap, a.name[:50], b.name[:50]))
span = ev[-1].time_range.end - ev[0].time_range.start
kern = sum(e.time_range.elapsed_us() for e in ev)
emit(what="layer gaps (2 iters)", span_us=span, kernel_us=kern, gaps_over_20us=len(gaps),
     gap_us=sum(x[0] for x in gaps), top=sorted(gaps, reverse=True)[:15])
