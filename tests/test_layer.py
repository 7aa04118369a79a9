"""The MoE layer against a per-token loop over experts, and its gradients."""
import pytest
import torch
import torch.nn.functional as F

from moe_routing_bench.routing.layer import MoEConfig, MoELayer, grouped_mm
from moe_routing_bench.routing.routers import STRATEGIES


def _naive(layer: MoELayer, x, aux):
    gate, kept, ids = aux.plan.gate_TK, aux.plan.kept_TK, aux.routing.expert_ids_TK
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            if kept[t, j]:
                e = ids[t, j]
                out[t] += gate[t, j] * (F.gelu(x[t] @ layer.w1_EHF[e]) @ layer.w2_EFH[e])
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cf", [None, 0.75])
def test_layer_equals_per_token_loop_and_router_learns(strategy, cf):
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(16, 32, 5, 2, strategy=strategy, capacity_factor=cf))
    with torch.no_grad():
        layer.router.weight.normal_()  # a decisive router
    x = torch.randn(40, 16)
    out, aux = layer(x, token_ids_T=torch.randint(0, 100, (40,)))
    torch.testing.assert_close(out, _naive(layer, x, aux), rtol=1e-4, atol=1e-5)
    (out.square().mean() + 0.01 * aux.balance_loss + 1e-3 * aux.z_loss).backward()
    assert layer.router.weight.grad.abs().sum() > 0  # through the gates or, at least, the balance loss
    assert layer.w1_EHF.grad.abs().sum() > 0


def test_grouped_mm_loop_fallback_equals_grouped_kernel():
    torch.manual_seed(1)
    x, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    ends = torch.tensor([3, 3, 10], dtype=torch.int32)  # expert 1 empty
    expected = torch.cat([x[:3] @ w[0], x[3:10] @ w[2]])
    torch.testing.assert_close(grouped_mm(x, w, ends), expected)
    odd, w_odd = torch.randn(10, 7), torch.randn(3, 7, 4)  # a row stride grouped GEMM refuses: the loop runs
    torch.testing.assert_close(grouped_mm(odd, w_odd, ends), torch.cat([odd[:3] @ w_odd[0], odd[3:] @ w_odd[2]]))


def test_aux_free_bias_moves_toward_balance():
    layer = MoELayer(MoEConfig(8, 16, 4, 1, strategy="aux-free"))
    layer.update_bias(torch.tensor([10, 0, 0, 2]), gamma=0.5)
    assert layer.bias_E.tolist() == [-0.5, 0.5, 0.5, 0.5]


def test_padded_batched_matmul_path_equals_ragged_grouped_path():
    torch.manual_seed(2)
    layer = MoELayer(MoEConfig(16, 32, 4, 2, capacity_factor=0.8))
    x = torch.randn(30, 16)
    out_ragged, aux = layer(x)
    assert aux.plan.layout == "ragged"
    from moe_routing_bench.routing import layer as layer_mod

    original = layer_mod._grouped_mm_supported
    layer_mod._grouped_mm_supported = lambda *a: False  # as on a torch without grouped GEMM
    try:
        out_padded, aux_padded = layer(x)
    finally:
        layer_mod._grouped_mm_supported = original
    assert aux_padded.plan.layout == "padded"
    torch.testing.assert_close(out_padded, out_ragged, rtol=1e-5, atol=1e-6)
