"""Pack then combine: identity experts give the weighted sum of kept assignments; determinism."""
import pytest
import torch

from moe_routing_bench.routing.dispatch import combine, pack
from moe_routing_bench.routing.plan import build_plan
from moe_routing_bench.routing.routers import route


def _case(T=50, E=6, K=2, H=24, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=gen)
    x = torch.randn(T, H, generator=gen).to(dtype)
    return route(logits, "softk", K), x


@pytest.mark.parametrize("cf, layout", [(None, "ragged"), (0.5, "ragged"), (1.0, "padded"), (0.3, "padded")])
@pytest.mark.parametrize("policy", ["position", "score"])
def test_pack_then_combine_with_identity_experts(cf, layout, policy):
    routing, x = _case()
    plan = build_plan(routing, capacity_factor=cf, layout=layout, drop_policy=policy)
    packed = pack(x, plan)
    assert packed.shape == (plan.num_rows, x.shape[1])
    out = combine(packed, plan)
    expected = x * plan.gate_TK.sum(-1, keepdim=True)  # sum over kept k of gate * x[t]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    if cf is not None:
        assert (plan.gate_TK == 0).any()  # some drops happened: the test exercises them


def test_combine_applies_each_expert_output_to_its_token():
    routing, x = _case(T=30, E=5, K=3)
    plan = build_plan(routing, capacity_factor=0.8, layout="padded")
    packed = pack(x, plan)
    scale_R = (torch.arange(plan.num_rows) // plan.capacity + 1).float()[:, None]  # expert e scales by e+1
    out = combine(packed * scale_R, plan)
    ids = routing.expert_ids_TK
    expected = ((plan.gate_TK * (ids + 1)).sum(-1, keepdim=True)) * x
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_padded_pack_zeroes_empty_rows_and_dropped_rows_contribute_nothing():
    routing, x = _case(T=8, E=4, K=1)
    plan = build_plan(routing, capacity_factor=2.0, layout="padded")
    packed = pack(x, plan)
    empty = plan.token_index_R == plan.num_tokens
    assert empty.any() and torch.all(packed[empty] == 0)
    poisoned = packed.clone()
    poisoned[empty] = float("nan")  # never read by combine
    assert torch.isfinite(combine(poisoned, plan)).all()


def test_combine_bf16_rounds_once_from_float32_and_is_deterministic():
    routing, x = _case(T=64, E=8, K=4, H=32, dtype=torch.bfloat16)
    plan = build_plan(routing)
    packed = pack(x, plan)
    out1, out2 = combine(packed, plan), combine(packed, plan)
    assert torch.equal(out1, out2)
    exact = (x.float() * plan.gate_TK.sum(-1, keepdim=True)).bfloat16()
    assert torch.equal(out1, exact)


def test_combine_gradients_reach_rows_and_gates():
    routing, x = _case(T=20, E=4, K=2)
    logits = torch.randn(20, 4, requires_grad=True)
    routing = route(logits, "softk", 2)
    plan = build_plan(routing, capacity_factor=0.75)
    y = pack(x, plan).requires_grad_(True)
    combine(y, plan).square().sum().backward()
    assert logits.grad.abs().sum() > 0
    dropped_rows = plan.token_index_R == plan.num_tokens
    assert torch.all(y.grad[dropped_rows] == 0)


def _autograd_pack_combine(x, y, plan):
    """pack and combine by plain differentiable torch ops (autograd writes the backward)."""
    x0 = torch.cat([x, x.new_zeros(1, x.shape[1])])
    packed = x0.index_select(0, plan.token_index_R)
    T, K = plan.row_TK.shape
    y_TKH = y.index_select(0, plan.row_TK.clamp(min=0).reshape(-1)).view(T, K, -1).float()
    y_TKH = torch.where(plan.kept_TK.unsqueeze(-1), y_TKH, 0.0)
    return packed, (y_TKH * plan.gate_TK.unsqueeze(-1)).sum(1).to(y.dtype)


@pytest.mark.parametrize("cf, layout, policy", [(None, "ragged", "position"), (0.6, "ragged", "score"),
                                                (0.7, "padded", "position"), (1.5, "padded", "score")])
@pytest.mark.parametrize("seed", [0, 1])
def test_written_out_backwards_equal_autograds(cf, layout, policy, seed):
    T, E, K, H = 37, 5, 3, 12
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=gen, dtype=torch.float64, requires_grad=True)
    plan = build_plan(route(logits, "softk", K), capacity_factor=cf, layout=layout, drop_policy=policy)
    x = torch.randn(T, H, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(plan.num_rows, H, generator=gen, dtype=torch.float64, requires_grad=True)
    g_R = torch.randn(plan.num_rows, H, generator=gen, dtype=torch.float64)
    g_T = torch.randn(T, H, generator=gen, dtype=torch.float64)

    def grads(packed, out):
        return torch.autograd.grad((packed * g_R).sum() + (out * g_T).sum(), (x, y, logits), retain_graph=True)

    ref = grads(*_autograd_pack_combine(x, y, plan))
    ours = grads(pack(x, plan), combine(y, plan))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the written-out sums run in float32
    assert ours[1].abs().sum() > 0 and ours[2].abs().sum() > 0


def test_backwards_are_bit_identical_run_to_run_in_bf16():
    routing, x = _case(T=200, E=4, K=2, H=64, dtype=torch.bfloat16)
    plan = build_plan(routing, capacity_factor=0.5)  # many drops: autograd's scatter-add put them all on row 0
    grads = []
    for _ in range(3):
        xr = x.clone().requires_grad_(True)
        combine(pack(xr, plan) * 1.5, plan).float().square().sum().backward()
        grads.append(xr.grad)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    # d/dx of sum((1.5 * x * s)^2) with s = the kept gate sum: 2 * 1.5^2 * s^2 * x (bf16 steps on the way)
    s = plan.gate_TK.sum(-1, keepdim=True)
    torch.testing.assert_close(grads[0].float(), 4.5 * s**2 * x.float(), rtol=3e-2, atol=1e-2)
