"""Issue 16: plan configs at the design shapes, each timed (events, L2 flushed) and checked against the
torch reference. JSON lines on stdout."""
import json, os, torch
import moe_routing_bench as mrb
from moe_routing_bench.routing import plan as plan_mod
from moe_routing_bench.routing.backends._triton import plan_kernels as pk

dev = "cuda" if torch.cuda.is_available() else "cpu"
def emit(**kw): print(json.dumps(kw), flush=True)
shapes = [(16384, 128, 2)] if dev == "cuda" else [(64, 16, 2)]
extra = [(32, 32, 4, True), (32, 32, 2, True), (32, 16, 1, True), (64, 32, 4, True), (64, 64, 2, True),
         (64, 32, 2, True), (128, 32, 4, True), (32, 32, 1, True)]
be = mrb.get_backend("triton")
for T, E, K in shapes:
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(17)).to(dev)
    routing = be.route(logits, "softk", K)
    hist = routing.histogram_for_plan()
    ids, w = routing.expert_ids_TK, routing.weights_TK
    ref = plan_mod.plan_tensors(ids.cpu(), w.cpu(), None, E, None, "position", False, "ragged")
    whole = mrb.measure(lambda: be.build_plan(routing), dev, iters=100).median_s * 1e6
    emit(what="build_plan", T=T, E=E, K=K, us=whole, hist_block_t=None if hist is None else hist[1])
    res = []
    for cfg in pk.PLAN_CONFIGS + extra:
        for use in (True, False):
            c5 = (*cfg, use)
            try:
                fn = lambda: pk.plan_tensors(ids, w, None, E, None, "position", False, "ragged", config=c5, block_hist=hist)
                out = fn()
                ok = all(torch.equal(a.cpu(), b) for a, b in zip(out[:7], ref[:7]))
                us = mrb.measure(fn, dev, iters=100).median_s * 1e6
                res.append((us, c5, ok))
            except Exception as e:
                emit(what="plan_cfg_error", T=T, cfg=c5, error=repr(e)[:200])
    res.sort(key=lambda r: r[0])
    for us, c5, ok in res[:10]:
        emit(what="plan_cfg", T=T, E=E, K=K, cfg=c5, us=us, correct=ok, new=c5[:4] in extra)
    emit(what="plan_incorrect", T=T, n=sum(1 for r in res if not r[2]), of=len(res))
