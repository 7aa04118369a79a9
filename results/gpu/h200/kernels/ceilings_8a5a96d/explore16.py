"""Issue 16 exploration on the GPU: pack variants (cache hints) x configs, traffic-shaped ceilings,
top-k/plan with events and CUDA-graph replay. Prints JSON lines to stdout."""
import json, os, sys, time
import torch, triton, triton.language as tl
import moe_routing_bench as mrb
from moe_routing_bench.routing.backends._triton import pack_kernels as pk
from moe_routing_bench.routing.backends._triton import combine_kernels as ck

dev = "cuda" if torch.cuda.is_available() else "cpu"
def emit(**kw):
    print(json.dumps(kw), flush=True)

def t_us(fn, iters=60, graph=False):
    return mrb.measure(fn, dev, iters=iters, cuda_graph=graph).median_s * 1e6

@triton.jit
def pack_v(x_ptr, row_ptr, out_ptr, T, R, H, stride_x, stride_o,
           K: tl.constexpr, EVICT: tl.constexpr, CS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    hh = tl.arange(0, BLOCK_H)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tm = t < T
    t64 = t.to(tl.int64)
    for hc in range(0, tl.cdiv(H, BLOCK_H)):
        cols = hc * BLOCK_H + hh
        cm = cols < H
        if EVICT:
            xv = tl.load(x_ptr + t64[:, None] * stride_x + cols[None, :], mask=tm[:, None] & cm[None, :], eviction_policy="evict_first")
        else:
            xv = tl.load(x_ptr + t64[:, None] * stride_x + cols[None, :], mask=tm[:, None] & cm[None, :])
        for k in tl.static_range(K):
            r = tl.load(row_ptr + t64 * K + k, mask=tm, other=-1)
            keep = (r >= 0) & (r < R)
            rs = tl.where(keep, r, 0)
            if CS:
                tl.store(out_ptr + rs[:, None] * stride_o + cols[None, :], xv, mask=keep[:, None] & cm[None, :], cache_modifier=".cs")
            else:
                tl.store(out_ptr + rs[:, None] * stride_o + cols[None, :], xv, mask=keep[:, None] & cm[None, :])

emit(what="device", name=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__, triton=triton.__version__)
copy = mrb.copy_bandwidth(dev)
emit(what="copy_GBps", value=copy / 1e9)

SHAPES = [(16384, 4096, 128, 2), (4096, 7168, 256, 8), (8192, 1024, 32, 2)] if dev == "cuda" else [(64, 256, 8, 2)]
for (T, H, E, K) in SHAPES:
    case = mrb.Case(T, H, E, K, dtype="bfloat16", device=dev)
    inp = mrb.make_inputs(case)
    be = mrb.get_backend("triton")
    calls = mrb.stage_callables(be, case, inp)
    routing = be.route(inp.logits_TE, case.strategy, K)
    plan = be.build_plan(routing, capacity_factor=case.capacity_factor, drop_policy=case.drop_policy,
                         layout=case.layout, renormalize_kept=case.renormalize_kept)
    x = inp.x_TH
    R = plan.token_index_R.shape[0]
    nbytes = (1 + K) * H * 2 * T
    ref = calls["pack"]()
    # ceilings shaped like the traffic
    out3 = torch.empty(T, K, H, dtype=x.dtype, device=dev)
    bc = t_us(lambda: out3.copy_(x[:, None, :].expand(T, K, H)))
    wr = torch.empty(T * K, H, dtype=x.dtype, device=dev)
    wo = t_us(lambda: wr.zero_())
    emit(what="ceilings", shape=[T, H, E, K], bytes=nbytes, broadcast_copy_us=bc, broadcast_pct=nbytes / bc / 1e3 / (copy / 1e9) * 100,
         write_only_us=wo, write_only_GBps=T * K * H * 2 / wo / 1e3, R=R, every_row_filled=plan.every_row_filled)
    for stage in ("topk", "plan", "pack", "combine", "routing_path"):
        ev = t_us(calls[stage]); 
        try:
            gr = t_us(calls[stage], graph=True)
        except Exception as e:
            gr = repr(e)[:80]
        emit(what="stage", shape=[T, H, E, K], stage=stage, events_us=ev, graph_us=gr,
             pct=(nbytes / ev / 1e3 / (copy / 1e9) * 100) if stage in ("pack", "combine") else None)
    from moe_routing_bench.routing.backends._triton.launch import configs_used
    emit(what="configs_used", shape=[T, H, E, K], used=configs_used())
    if not plan.every_row_filled:
        continue
    out = torch.empty(R, H, dtype=x.dtype, device=dev)
    row = plan.row_TK.contiguous()
    results = []
    cands = [c for c in pk.row_configs() if triton.next_power_of_2(H) // 8 <= c.kwargs["BLOCK_H"] <= max(512, 2 * triton.next_power_of_2(H))
             and c.kwargs["BLOCK_T"] * c.kwargs["BLOCK_H"] <= 16384]
    extra = [triton.Config({"BLOCK_T": bt, "BLOCK_H": bh}, num_warps=w) for bt, bh, w in
             [(1, 2048, 2), (1, 1024, 2), (1, 512, 1), (1, 1024, 1), (2, 1024, 2), (4, 512, 2), (1, 4096, 2)]
             if triton.next_power_of_2(H) // 8 <= bh]
    def run(c, ev_, cs_):
        bt, bh, w = c.kwargs["BLOCK_T"], c.kwargs["BLOCK_H"], c.num_warps
        grid = (triton.cdiv(T, bt),)
        fn = lambda: pack_v[grid](x, row, out, T, R, H, x.stride(0), out.stride(0), K=K, EVICT=ev_, CS=cs_,
                                  BLOCK_T=bt, BLOCK_H=bh, num_warps=w)
        out.fill_(float("nan")); fn()
        ok = bool(torch.equal(out, ref))
        results.append((t_us(fn, iters=40), bt, bh, w, ev_, cs_, ok, c))
    for c in (cands + extra if dev == "cuda" else cands[:1]):
        run(c, False, False)
    results.sort(key=lambda r: r[0])
    for r in list(results[:4]):
        for ev_, cs_ in ((True, False), (False, True), (True, True)):
            run(r[7], ev_, cs_)
    results.sort(key=lambda r: r[0])
    for r in results[:12]:
        emit(what="pack_variant", shape=[T, H, E, K], us=r[0], pct=nbytes / r[0] / 1e3 / (copy / 1e9) * 100,
             BLOCK_T=r[1], BLOCK_H=r[2], warps=r[3], evict_first=r[4], store_cs=r[5], correct=r[6])
    base = [r for r in results if not r[4] and not r[5]]
    emit(what="pack_best_plain", shape=[T, H, E, K], us=base[0][0], cfg=base[0][1:4])
    emit(what="pack_all_incorrect", n=sum(1 for r in results if not r[6]))
