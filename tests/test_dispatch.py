"""Pack then combine: identity experts give the weighted sum of kept assignments; determinism."""
import pytest
import torch

from moe_routing_bench.dispatch import combine, pack
from moe_routing_bench.plan import build_plan
from moe_routing_bench.routers import route


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
