"""Triton kernels (the `triton` backend) against the torch reference.

On machines without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets it up
before any kernel is imported). With a GPU the same tests run on CUDA with the fixed launch configs,
and the `gpu`-marked cases add the benchmark shapes with tuned configs (tuned into the on-disk tune
cache, so the GPU tool then measures exactly the configs checked here): `tools/gpu_kernels.py` runs
this file first. Every kernel output buffer is poisoned (NaN floats, sentinel ints, a fixed bool) before
the kernels write, so an element a kernel forgets shows up as a mismatch. Ids and plan fields must
be equal; float values within float32 rounding (1e-5) or one bf16 step.
"""
import functools
import os

import pytest
import torch

from moe_routing_bench.routing import dispatch
from moe_routing_bench.routing import routers  # noqa: E402
from moe_routing_bench.routing import plan as plan_mod  # noqa: E402
from moe_routing_bench.routing.backends import get_backend  # noqa: E402
from moe_routing_bench.routing.validation import ConfigError  # noqa: E402
from moe_routing_bench.routing.backends._triton import launch as _common
from moe_routing_bench.routing.backends.triton_ops import triton_backend  # noqa: E402
from moe_routing_bench.routing.backends._triton.pack_kernels import row_configs  # noqa: E402
from moe_routing_bench.routing.backends._triton.plan_kernels import PLAN_CONFIGS  # noqa: E402
from moe_routing_bench.routing.backends._triton.topk_kernels import MODES, route_topk  # noqa: E402
from moe_routing_bench.routing.backends._triton.topk_kernels import configs as topk_configs  # noqa: E402
from moe_routing_bench.routing.backends.triton_ops import build_plan, combine, pack, route  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
PLAN_INT_FIELDS = ("counts_E", "kept_counts_E", "offsets_E1", "slot_TK", "kept_TK", "row_TK", "token_index_R")


@pytest.fixture(autouse=True)
def poisoned_outputs():
    with _common.using(poison="a", tune_cache="", autotune=False):
        yield


def tuned(num_tokens):
    """At the benchmark sizes (GPU only): tuned configs (in memory: tuning under pytest must not decide
    what the GPU tool measures). Smaller cases keep the fixed configs; every candidate config is
    checked on its own by the `test_every_*_config_*` tests."""
    return _common.using(autotune=num_tokens >= 4096)


GPU_SHAPES = [(16384, 4096, 128, 2), (4096, 7168, 256, 8), (8192, 1024, 32, 2)]  # T, H, E, K (DESIGN section 7)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed)).to(device=DEV, dtype=dtype)


def assert_same_routing(a, b, atol=1e-6, rtol=1e-5):
    assert a.expert_ids_TK.dtype == b.expert_ids_TK.dtype == torch.int64
    assert torch.equal(a.expert_ids_TK, b.expert_ids_TK)
    torch.testing.assert_close(a.weights_TK, b.weights_TK, atol=atol, rtol=rtol)
    torch.testing.assert_close(a.probs_TE, b.probs_TE, atol=atol, rtol=rtol)
    assert a.valid_TK is None and b.valid_TK is None or torch.equal(a.valid_TK, b.valid_TK)
    assert a.causal_safe == b.causal_safe


def assert_same_plan(a, b):
    for name in ("num_tokens", "num_experts", "top_k", "capacity", "layout", "every_row_filled"):
        assert getattr(a, name) == getattr(b, name), name
    for name in PLAN_INT_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name
    assert a.gate_TK.dtype == torch.float32
    torch.testing.assert_close(a.gate_TK, b.gate_TK, atol=1e-6, rtol=1e-5)


def assert_bf16_close(a, b):
    """Within one bf16 step (the interpreter rounds float32 -> bf16 toward zero)."""
    assert a.dtype == b.dtype
    assert not torch.isnan(a).any()
    if a.dtype == torch.bfloat16:
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-6)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- registry

def test_registry_returns_the_triton_backend():
    b = get_backend("triton")
    assert b.name == "triton" and b.route is route and b.pack is pack and b.combine is combine
    assert triton_backend().name == "triton"


# ----------------------------------------------------------------------------- router

ROUTE_CASES = [
    # strategy, T, E, K, options
    ("top1", 333, 60, 1, {}),
    ("top1", 64, 512, 1, {}),
    ("topk-hard", 333, 60, 3, {}),
    ("softk", 333, 60, 2, {}),
    ("softk", 200, 7, 5, {"temperature": 0.5}),
    ("softk", 200, 128, 8, {"renormalize": False}),
    ("softk", 200, 33, 4, {"renormalize": False, "temperature": 2.0}),
    ("softk", 64, 512, 8, {}),
    ("softk", 50, 2, 2, {}),
    ("aux-free", 333, 60, 6, {}),
    ("aux-free", 200, 96, 8, {"bias": True}),
    ("aux-free", 64, 512, 4, {"bias": True}),
] + [pytest.param(s, T, E, K, o, marks=pytest.mark.gpu) for (T, _, E, K) in GPU_SHAPES
     for s, o in [("softk", {}), ("aux-free", {"bias": True}), ("softk", {"renormalize": False})]]


@pytest.mark.parametrize("strategy,T,E,K,opts", ROUTE_CASES)
def test_route_matches_reference(strategy, T, E, K, opts):
    opts = dict(opts)
    if opts.pop("bias", False):
        opts["bias_E"] = 0.3 * randn(E, seed=5)
    logits = randn(T, E, seed=T + E + K)
    with tuned(T):
        assert_same_routing(route(logits, strategy, K, **opts), routers.route(logits, strategy, K, **opts))


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", topk_configs(), ids=str)
def test_every_topk_config_computes_the_reference(cfg):
    for T, E, K in [(4096, 128, 2), (1000, 256, 8), (777, 32, 2)]:
        logits = randn(T, E, seed=T)
        with _common.using(force_config={"topk": cfg}):
            got = route(logits, "softk", K)
        assert_same_routing(got, routers.route(logits, "softk", K))


@pytest.mark.parametrize("strategy", ["top1", "topk-hard", "softk", "aux-free"])
def test_route_ties_lower_expert_id_wins(strategy):
    K = 1 if strategy == "top1" else 4
    logits = torch.randint(-2, 3, (300, 24), generator=gen(1)).float().to(DEV)  # many exact ties
    logits[:5] = 0.0  # whole rows tied
    logits[5, :] = -0.0
    logits[5, 7:] = 0.0  # -0.0 and +0.0 tie too
    a, b = route(logits, strategy, K), routers.route(logits, strategy, K)
    assert_same_routing(a, b)
    assert a.expert_ids_TK[0].tolist() == list(range(K))


def test_route_bf16_logits_are_upcast_in_the_kernel():
    logits = randn(300, 40, seed=3, dtype=torch.bfloat16)
    assert_same_routing(route(logits, "softk", 3), routers.route(logits, "softk", 3))


@pytest.mark.parametrize("strategy", ["hash", "expert-choice"])
def test_route_falls_back_to_the_reference(strategy):
    logits = randn(100, 16, seed=4)
    tok = torch.randint(0, 1000, (100,), generator=gen(2)).to(DEV)
    a = route(logits, strategy, 2, token_ids_T=tok, capacity_factor=1.5)
    b = routers.route(logits, strategy, 2, token_ids_T=tok, capacity_factor=1.5)
    assert torch.equal(a.expert_ids_TK, b.expert_ids_TK) and torch.equal(a.weights_TK, b.weights_TK)
    assert a.causal_safe == b.causal_safe


def test_route_rejects_bad_arguments_like_the_reference():
    logits = randn(10, 8)
    for args, kw in [(("softk", 0), {}), (("softk", 9), {}), (("top1", 2), {}), (("softk", 2), {"temperature": 0.0}),
                     (("nope", 2), {})]:
        with pytest.raises(ConfigError):
            routers.route(logits, *args, **kw)
        with pytest.raises(ConfigError):
            route(logits, *args, **kw)


def test_route_without_probs_skips_only_the_probs():
    logits = randn(100, 32, seed=8)
    ids, w, probs = route_topk(logits, MODES["softk"], 4, write_probs=False)
    ref = routers.route(logits, "softk", 4)
    assert probs is None and torch.equal(ids, ref.expert_ids_TK)
    torch.testing.assert_close(w, ref.weights_TK)


@pytest.mark.parametrize("strategy,K,opts", [
    ("top1", 1, {}), ("topk-hard", 3, {}), ("softk", 3, {"temperature": 0.7}), ("softk", 3, {"renormalize": False}),
    ("aux-free", 3, {"bias": True}),
])
def test_route_gradients_equal_the_reference(strategy, K, opts):
    opts = dict(opts)
    E = 20
    if opts.pop("bias", False):
        opts["bias_E"] = 0.3 * randn(E, seed=6)
    base = randn(150, E, seed=7)
    gw, gp = randn(150, K, seed=8), randn(150, E, seed=9)
    grads, outs = [], []
    for fn in (route, routers.route):
        logits = base.clone().requires_grad_()
        r = fn(logits, strategy, K, **opts)
        assert r.weights_TK.requires_grad == (strategy != "topk-hard")
        loss = (r.probs_TE * gp).sum() + routers.balance_loss(r)
        if r.weights_TK.requires_grad:
            loss = loss + (r.weights_TK * gw).sum()
        loss.backward()
        grads.append(logits.grad)
        outs.append(r)
    assert torch.equal(outs[0].expert_ids_TK, outs[1].expert_ids_TK)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- plan

def routing_for(kind, T, E, K, seed=0):
    """Routings that stress the plan: random, skewed (empty experts), all on one expert, equal weights."""
    logits = randn(T, E, seed=seed)
    if kind == "skewed":  # only the first third of the experts ever chosen, a hot one among them
        logits[:, E // 3:] -= 100.0
        logits[:, 1] += 2.0
    elif kind == "one-expert":  # every token's first choice is expert E-2 (K=1: all tokens there)
        logits[:, E - 2] += 100.0
    strategy = "topk-hard" if kind == "equal-weights" else "softk"
    return routers.route(logits, strategy, K)


PLAN_CASES = [
    # kind, T, E, K
    ("random", 1000, 60, 1),
    ("random", 700, 60, 2),
    ("random", 333, 37, 3),
    ("random", 300, 128, 8),
    ("skewed", 500, 30, 2),
    ("one-expert", 400, 16, 1),
    ("one-expert", 300, 9, 4),
    ("equal-weights", 450, 12, 5),
] + [pytest.param("random", T, E, K, marks=pytest.mark.gpu) for (T, _, E, K) in GPU_SHAPES]
POLICIES = [
    # capacity_factor, drop_policy, layout, renormalize_kept
    (None, "position", "ragged", False),
    (None, "score", "ragged", True),
    (0.7, "position", "ragged", False),
    (0.7, "position", "padded", True),
    (0.7, "score", "ragged", True),
    (0.7, "score", "padded", False),
    (1.5, "position", "padded", False),
]


@pytest.mark.parametrize("kind,T,E,K", PLAN_CASES)
@pytest.mark.parametrize("cf,policy,layout,renorm", POLICIES)
def test_plan_matches_reference(kind, T, E, K, cf, policy, layout, renorm):
    r = routing_for(kind, T, E, K, seed=T + K)
    kw = dict(capacity_factor=cf, drop_policy=policy, layout=layout, renormalize_kept=renorm)
    with tuned(T):
        a = build_plan(r, **kw)
    assert_same_plan(a, plan_mod.build_plan(r, **kw))
    if cf is not None and kind in ("skewed", "one-expert"):
        assert not bool(a.kept_TK.all())  # the case really drops


@pytest.mark.parametrize("cfg", [(64, 32, 4, True), (1024, 256, 4, False), (256, 64, 8, False),
                                 (256, 64, 8, True, False)])
@pytest.mark.parametrize("T,E,K,cf,layout", [(700, 60, 2, None, "ragged"), (333, 37, 3, 0.7, "padded"),
                                             (300, 128, 8, 1.0, "ragged"), (1000, 16, 1, 1.5, "padded")])
def test_plan_from_the_fused_routers_histogram(cfg, T, E, K, cf, layout):
    """The router kernel's per-block histogram replaces the plan's histogram launch (plan blocks a
    multiple of router blocks, both scan variants); replaced ids are never planned from a stale one."""
    from moe_routing_bench.routing.backends._triton import plan_kernels as kplan

    with _common.using(force_config={"topk": dict(BLOCK_T=16, num_warps=4)}):  # router blocks of 16 tokens
        r = route(randn(T, E, seed=T + K), "softk", K)
    hist = r.histogram_for_plan()
    assert hist is not None and hist[0].dtype == torch.int32
    assert torch.equal(hist[0].sum(0)[:E].long(), torch.bincount(r.expert_ids_TK.view(-1), minlength=E))
    kw = dict(capacity_factor=cf, layout=layout, renormalize_kept=True)
    ref = plan_mod.build_plan(r, **kw)
    aligned = kplan._hist_ratio(hist, max(1, cfg[0] // kplan.next_pow2(K)), kplan.next_pow2(E), False) > 0
    assert aligned == (max(1, cfg[0] // kplan.next_pow2(K)) % hist[1] == 0)  # else the plan counts itself
    # (a 5th config element False makes the plan count itself even where the histograms align)
    assert_same_plan(plan_mod.build_plan(r, **kw, impl=functools.partial(kplan.plan_tensors, config=cfg,
                                                                         block_hist=hist)), ref)
    assert_same_plan(build_plan(r, **kw), ref)
    r.expert_ids_TK[0, 0] = (r.expert_ids_TK[0, 0] + 1) % E  # written since: the histogram no longer counts them
    assert r.histogram_for_plan() is None
    assert_same_plan(build_plan(r, **kw), plan_mod.build_plan(r, **kw))


@pytest.mark.parametrize("policy", ["position", "score"])
@pytest.mark.parametrize("cf,layout", [(None, "ragged"), (1.0, "ragged"), (0.5, "padded")])
def test_plan_with_invalid_slots_expert_choice(policy, cf, layout):
    logits = randn(120, 10, seed=11)
    r = routers.route(logits, "expert-choice", 2, capacity_factor=1.3)
    assert r.valid_TK is not None and not bool(r.valid_TK.all())
    kw = dict(capacity_factor=cf, drop_policy=policy, layout=layout, renormalize_kept=True)
    assert_same_plan(build_plan(r, **kw), plan_mod.build_plan(r, **kw))


def test_plan_explicit_capacity_and_poison_b():
    r = routing_for("random", 640, 24, 3, seed=2)
    with _common.using(poison="b"):
        for policy in ("position", "score"):
            for layout in ("ragged", "padded"):
                kw = dict(capacity=7, drop_policy=policy, layout=layout)
                assert_same_plan(build_plan(r, **kw), plan_mod.build_plan(r, **kw))


def test_plan_gate_carries_the_router_gradient():
    base = randn(200, 16, seed=12)
    grads = []
    for rt, bp in ((route, build_plan), (routers.route, plan_mod.build_plan)):
        logits = base.clone().requires_grad_()
        p = bp(rt(logits, "softk", 3), capacity_factor=0.6, renormalize_kept=True)
        assert p.gate_TK.requires_grad
        (p.gate_TK * torch.arange(3.0, device=DEV)).sum().backward()
        grads.append(logits.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- pack and combine

DISPATCH_CASES = [
    # kind, T, E, K, H, capacity_factor, drop_policy, layout
    ("random", 700, 60, 2, 96, None, "position", "ragged"),
    ("random", 333, 37, 3, 256, 0.7, "position", "padded"),
    ("skewed", 500, 30, 2, 64, 0.8, "score", "ragged"),
    ("one-expert", 300, 9, 4, 40, 1.5, "position", "padded"),
    ("random", 150, 128, 8, 128, None, "score", "ragged"),
] + [pytest.param("random", T, E, K, H, cf, "position", layout, marks=pytest.mark.gpu)
     for (T, H, E, K) in GPU_SHAPES for cf, layout in [(None, "ragged"), (1.25, "padded")]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind,T,E,K,H,cf,policy,layout", DISPATCH_CASES)
def test_pack_and_combine_match_reference(dtype, kind, T, E, K, H, cf, policy, layout):
    r = routing_for(kind, T, E, K, seed=H)
    p = plan_mod.build_plan(r, capacity_factor=cf, drop_policy=policy, layout=layout, renormalize_kept=True)
    x = randn(T, H, seed=1, dtype=dtype)
    with tuned(T):
        packed = pack(x, p)
        assert torch.equal(packed, dispatch.pack(x, p))  # a copy: bit-exact, zero rows included
        y = randn(p.num_rows, H, seed=2, dtype=dtype)
        if p.every_row_filled is False:
            y[p.token_index_R == T] = float("nan")  # rows of no kept slot must never be read
        out = combine(y, p)
        assert_bf16_close(out, dispatch.combine(y, p))
        assert torch.equal(out, combine(y, p))  # deterministic: bit-identical run to run


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", row_configs(), ids=str)
def test_every_row_config_computes_the_reference(cfg):
    """Each pack/combine(/backward) config the tuner may pick, forced, at uneven sizes and both layouts."""
    for kind, T, E, K, H, cf, layout in [("random", 3001, 128, 2, 4096, None, "ragged"),
                                         ("skewed", 1000, 256, 8, 7168, 1.0, "padded"),
                                         ("random", 2000, 32, 2, 1000, 1.25, "ragged")]:
        r = routing_for(kind, T, E, K, seed=H)
        p = plan_mod.build_plan(r, capacity_factor=cf, layout=layout, renormalize_kept=True)
        x = randn(T, H, seed=1, dtype=torch.bfloat16)
        y0 = randn(p.num_rows, H, seed=2, dtype=torch.bfloat16)
        go = randn(T, H, seed=3, dtype=torch.bfloat16)
        grads = []
        with _common.using(force_config={"pack": cfg, "combine": cfg, "combine_bwd": cfg}):
            assert torch.equal(pack(x, p), dispatch.pack(x, p))
            out = combine(y0, p)
            assert_bf16_close(out, dispatch.combine(y0, p))
            assert torch.equal(out, combine(y0, p))
            for fn in (combine, dispatch.combine):
                y, g = y0.clone().requires_grad_(), p.gate_TK.clone().requires_grad_()
                fn(y, plan_mod.Plan(**{**p.__dict__, "gate_TK": g})).backward(go)
                grads.append((y.grad, g.grad))
        assert_bf16_close(grads[0][0], grads[1][0])
        torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-2, rtol=1e-2)


def test_combine_skips_dropped_slots_and_handles_tokens_with_nothing_kept():
    r = routing_for("one-expert", 200, 8, 2, seed=3)
    p = plan_mod.build_plan(r, capacity=5)  # almost everything dropped
    lost = ~p.kept_TK.any(-1)
    assert bool(lost.any())
    y = randn(p.num_rows, 32, seed=4, dtype=torch.bfloat16)
    out = combine(y, p)
    assert torch.equal(out[lost], torch.zeros_like(out[lost]))
    assert_bf16_close(out, dispatch.combine(y, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cf,policy,layout,size", [
    (None, "position", "ragged", (240, 12, 3, 48)), (0.7, "score", "padded", (240, 12, 3, 48)),
    (0.8, "position", "ragged", (240, 12, 3, 48)),
    pytest.param(None, "position", "ragged", (2048, 64, 4, 512), marks=pytest.mark.gpu),
    pytest.param(0.8, "score", "padded", (2048, 64, 4, 512), marks=pytest.mark.gpu),
])
def test_layer_gradients_equal_the_reference(dtype, cf, policy, layout, size):
    """route -> plan -> pack -> a row-specific nonlinearity -> combine, backward to x and the logits."""
    T, E, K, H = size
    base_x, base_l = randn(T, H, seed=20, dtype=dtype), randn(T, E, seed=21)
    g_out = randn(T, H, seed=22, dtype=dtype)
    results = []
    for backend in ("triton", "torch"):
        b = get_backend(backend)
        x, logits = base_x.clone().requires_grad_(), base_l.clone().requires_grad_()
        p = b.build_plan(b.route(logits, "softk", K), capacity_factor=cf, drop_policy=policy, layout=layout,
                         renormalize_kept=cf is not None)  # dropless renorm is ~identity: grads ~rounding noise
        packed = b.pack(x, p)
        s_R = randn(p.num_rows, 1, seed=23, dtype=dtype)  # row-specific: experts differ
        y = torch.tanh(packed) * s_R + packed
        out = b.combine(y, p)
        out.backward(g_out)
        results.append((out.detach(), x.grad, logits.grad))
    (o1, gx1, gl1), (o2, gx2, gl2) = results
    assert_bf16_close(o1, o2)
    if dtype == torch.float32:
        torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gl1, gl2, atol=1e-5, rtol=1e-4)
    else:  # bf16 rounds at different places (fp32 sums here, bf16 index_add there): a few steps
        scale = gx2.float().abs().max().item()
        torch.testing.assert_close(gx1.float(), gx2.float(), rtol=2 ** -5, atol=2 ** -6 * scale)
        torch.testing.assert_close(gl1, gl2, atol=2e-2 * gl2.abs().max().item(), rtol=2e-2)


GELU_CONFIGS = [dict(BLOCK=b, num_warps=w) for b, w in [(1024, 4), (2048, 8), (8192, 16)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,cfg", [((37, 53), None), ((3, 1000), GELU_CONFIGS[0]), ((0, 8), None),
                                       ((129, 64), GELU_CONFIGS[1]), ((5, 2000), GELU_CONFIGS[2]),
                                       pytest.param((32768, 8192), None, marks=pytest.mark.gpu)])
def test_gelu_and_its_backward_match_torch(dtype, shape, cfg):
    """The backend's GELU (the expert MLPs' activation) and its gradient against F.gelu, values from
    -8 to 8 and the tails; every output element written (poisoned buffers)."""
    b = get_backend("triton")
    x = (randn(*shape, seed=40) * 3).clamp(-8, 8)
    if x.numel():
        x.view(-1)[:4] = torch.tensor([-30.0, 30.0, 0.0, -0.5])
    x = x.to(dtype)
    g = randn(*shape, seed=41, dtype=dtype)
    forced = _common.using(force_config={"gelu": cfg, "gelu_bwd": cfg}) if cfg else _common.using()
    with forced:
        xa = x.clone().requires_grad_()
        out = b.gelu(xa)
        out.backward(g)
    xr = x.clone().requires_grad_()
    ref = torch.nn.functional.gelu(xr)
    ref.backward(g)
    assert out.dtype == dtype and xa.grad.dtype == dtype and not out.isnan().any()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=2 ** -12)
    torch.testing.assert_close(out, ref.detach(), **tol)
    torch.testing.assert_close(xa.grad, xr.grad, **tol)
    with torch.no_grad():
        assert torch.equal(b.gelu(x), out.detach())  # the no-autograd launch computes the same


def test_gelu_falls_back_where_the_kernel_does_not_run():
    x = randn(16, 8, seed=42).t()  # not contiguous
    assert torch.equal(get_backend("triton").gelu(x), torch.nn.functional.gelu(x))
    assert get_backend("torch").gelu is None  # the layer then uses F.gelu


def test_combine_backward_pieces_equal_the_reference():
    r = routing_for("skewed", 300, 20, 3, seed=5)
    p = plan_mod.build_plan(r, capacity_factor=0.9, layout="padded")
    y0 = randn(p.num_rows, 64, seed=6)
    g0 = p.gate_TK.clone()
    go = randn(300, 64, seed=7)
    grads = []
    for fn in (combine, dispatch.combine):
        y, g = y0.clone().requires_grad_(), g0.clone().requires_grad_()
        plan_g = plan_mod.Plan(**{**p.__dict__, "gate_TK": g})
        fn(y, plan_g).backward(go)
        grads.append((y.grad, g.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- benchmark plumbing

def test_bench_stages_and_roofline_run_with_the_triton_backend(tmp_path):
    from moe_routing_bench.harness.cases import Case, bench_stages
    from moe_routing_bench.harness.roofline import plot_roofline, run_roofline

    case = Case(96, 64, 12, 2, device=DEV, capacity_factor=1.0, layout="padded")
    recs = bench_stages(case, "triton", warmup=0, iters=1)
    assert [r["name"] for r in recs] == ["topk", "plan", "route_plan", "pack", "combine", "routing_path"]
    roof = run_roofline([(64, 32, 8, 2)], backends=("torch", "triton"), device=DEV, iters=1, warmup=0,
                        copy_bytes_per_s=1e9)
    assert {r["backend"] for r in roof} == {"torch", "triton"}
    assert all("pct_of_copy" in r for r in roof if r["name"] in ("pack", "combine", "routing_path"))
    png = plot_roofline(roof, str(tmp_path / "roof.png"))
    assert os.path.getsize(png) > 1000


@pytest.mark.parametrize("cfg", [(64, 32, 4, True), (128, 64, 8, False), (64, 64, 4, False), (256, 32, 4, True)]
                         + [pytest.param(c, marks=pytest.mark.gpu) for c in PLAN_CONFIGS])
@pytest.mark.parametrize("cf,layout,valid", [(None, "ragged", False), (0.7, "padded", False), (1.0, "ragged", True)])
def test_plan_launch_configs_all_compute_the_reference(cfg, cf, layout, valid):
    """Every config the GPU plan tuner may pick (block size, chunk, warps, separate block scan)."""
    from moe_routing_bench.routing.backends._triton import plan_kernels as kplan

    if valid:
        r = routers.route(randn(300, 10, seed=13), "expert-choice", 2, capacity_factor=1.3)
    else:
        r = routing_for("skewed", 700, 37, 3, seed=14)
    kw = dict(capacity_factor=cf, layout=layout, renormalize_kept=True)
    got = plan_mod.build_plan(r, **kw, impl=functools.partial(kplan.plan_tensors, config=cfg))
    assert_same_plan(got, plan_mod.build_plan(r, **kw))
