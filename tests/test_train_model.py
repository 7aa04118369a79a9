"""The training model: shapes, dense baseline, FLOPs, hash keys, router gradients, statistics, causality."""
import math

import pytest
import torch
import torch.nn.functional as F

from moe_routing_bench.routing import metrics
from moe_routing_bench.routing.layer import MoELayer
from moe_routing_bench.routing.routers import expert_counts
from train.model import STAT_NAMES, LossAndStats, ModelConfig, MoETransformer, routing_stats


def tiny(router="softk", **kw):
    base = dict(seq_len=16, layers=2, dim=32, heads=2, dropout=0.0, ffn_mult=2, num_experts=4, top_k=2,
                router=router, capacity_factor=None)
    base.update(kw)
    torch.manual_seed(0)
    return MoETransformer(ModelConfig(**base))


def batch(B=3, S=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, S), generator=g), torch.randint(0, 256, (B, S), generator=g)


def test_forward_shapes_and_aux():
    m = tiny()
    x, _ = batch()
    logits, aux = m(x)
    assert logits.shape == (3, 16, 256)
    assert len(aux) == 2 and all(len(g) == 1 and g[0].routing.num_tokens == 48 for g in aux)
    assert all(isinstance(b.ffn, MoELayer) for b in m.blocks)


def test_dense_baseline_has_equal_active_ffn_width():
    d = tiny("dense")
    assert [b.ffn.w1.out_features for b in d.blocks] == [2 * 2 * 32] * 2  # k * ffn_mult * dim
    logits, aux = d(batch()[0])
    assert aux == [[], []] and logits.shape == (3, 16, 256)
    moe = tiny("softk")
    # equal active FLOPs: the two models differ only by the router (D x E per layer)
    assert d.active_params() + 2 * 32 * 4 == pytest.approx(moe.active_params())


def test_flops_per_token_counts_active_experts():
    m = tiny("softk", top_k=1, tie_head=False)
    D, F_, E, L, V, S = 32, 64, 4, 2, 256, 16
    per_layer = 4 * D * D + 4 * D + D * E + 2 * D * F_ * E * (1 / E)  # attn, 2 LN, router, experts k/E
    n_active = L * per_layer + 2 * D + D * V  # final LN, head (embeddings excluded)
    assert m.active_params() == pytest.approx(n_active)
    assert m.flops_per_token() == pytest.approx(6 * n_active + 12 * L * D * S)
    total_experts = sum(p.numel() for n, p in m.named_parameters() if "w1_EHF" in n or "w2_EFH" in n)
    assert total_experts == L * 2 * D * F_ * E  # all experts exist, only k/E of them count


def test_hash_routes_by_token_id_not_position():
    m = tiny("hash")
    x = torch.full((2, 16), 7)
    x[1, ::2] = 200
    _, aux = m(x)
    ids = aux[0][0].routing.expert_ids_TK.view(2, 16, -1)
    assert (ids[0] == ids[0, 0]).all()  # same token, every position: same experts
    assert (ids[1, 1::2] == ids[0, 0]).all()
    _, aux_shift = m(torch.roll(x, 1, dims=1))
    assert torch.equal(aux_shift[0][0].routing.expert_ids_TK.view(2, 16, -1)[:, 1:], ids[:, :-1])


def _router_grads(router, alpha, beta, cf=None):
    m = tiny(router, capacity_factor=cf)
    step = LossAndStats(m, alpha, beta)
    x, y = batch()
    loss, *_ = step(x, y)
    loss.backward()
    return m, [b.ffn.router.weight.grad for b in m.blocks]


@pytest.mark.parametrize("router", ["top1", "softk", "expert-choice", "aux-free"])
def test_learned_routers_get_gradient_from_the_lm_loss(router):
    m, grads = _router_grads(router, alpha=0.0, beta=0.0, cf=1.25)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert missing == []  # DDP needs no find_unused_parameters


def test_topk_hard_router_learns_through_the_balance_loss_only():
    _, lm_only = _router_grads("topk-hard", alpha=0.0, beta=0.0)
    assert all(g is not None and g.abs().sum() == 0 for g in lm_only)  # in the graph, zero
    _, with_balance = _router_grads("topk-hard", alpha=1e-2, beta=0.0)
    assert all(g.abs().sum() > 0 for g in with_balance)


@pytest.mark.parametrize("router,cf", [("softk", 0.5), ("top1", None), ("hash", 1.0)])
def test_every_expert_has_a_gradient_tensor(router, cf):
    m, _ = _router_grads(router, 1e-2, 1e-3, cf)
    for b in m.blocks:
        assert b.ffn.w1_EHF.grad is not None and b.ffn.w2_EFH.grad is not None


@pytest.mark.parametrize("router,cf", [("softk", 0.5), ("expert-choice", 1.0), ("top1", 1.0), ("aux-free", None)])
def test_routing_stats_agree_with_metrics(router, cf):
    m = tiny(router, capacity_factor=cf)
    _, aux = m(batch()[0])
    for (a,) in aux:
        vec, counts = routing_stats(a)
        assert torch.equal(counts, expert_counts(a.routing))  # pre-drop counts
        st = dict(zip(STAT_NAMES, vec.tolist()))
        d = metrics.drop_rates(a.plan.kept_TK, a.routing.valid_TK)
        ls = metrics.load_stats(counts)
        assert st["drop_rate"] == pytest.approx(d["avg_drop_rate"], abs=1e-6)
        assert st["token_drop_rate"] == pytest.approx(d["token_drop_rate"], abs=1e-6)
        assert st["load_cv"] == pytest.approx(ls["load_cv"], rel=1e-5)
        assert st["load_max_over_mean"] == pytest.approx(ls["load_max_over_mean"], rel=1e-5)
        assert st["gate_entropy"] == pytest.approx(float(metrics.gate_entropy(a.routing.probs_TE.detach())), rel=1e-5)
        assert st["balance_loss"] == pytest.approx(float(a.balance_loss.detach()), rel=1e-6)
        assert int(counts.sum()) == (48 * a.routing.top_k if a.routing.valid_TK is None else int(a.routing.valid_TK.sum()))
    if cf == 0.5:
        assert st["drop_rate"] > 0


def test_loss_and_stats_adds_scaled_aux_losses():
    m = tiny("softk", capacity_factor=1.0)
    x, y = batch()
    loss, ce, stats, counts = LossAndStats(m, 0.1, 0.01)(x, y)
    logits, aux = m(x)
    ref_ce = F.cross_entropy(logits.view(-1, 256), y.view(-1))
    ref = ref_ce + sum(0.1 * a.balance_loss + 0.01 * a.z_loss for (a,) in aux)
    assert float(ce) == pytest.approx(float(ref_ce), rel=1e-5)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert stats.shape == (2, len(STAT_NAMES)) and counts.shape == (2, 4)
    assert not stats.requires_grad


def test_causal_routers_do_not_see_the_future_expert_choice_does():
    assert ModelConfig(router="expert-choice").causal_safe is False
    assert ModelConfig(router="softk").causal_safe is True
    for router, leaks_allowed in [("softk", False), ("expert-choice", True)]:
        m = tiny(router, capacity_factor=1.0 if router == "expert-choice" else None).eval()
        x, _ = batch(B=1)
        x2 = x.clone()
        x2[0, 8:] = (x2[0, 8:] + 1) % 256  # change the future only
        with torch.no_grad():
            a, _ = m(x)
            b, _ = m(x2)
        same_past = torch.allclose(a[0, :8], b[0, :8], atol=1e-5)
        assert same_past != leaks_allowed  # expert-choice: the future changed the past's logits


@pytest.mark.parametrize("router", ["softk", "expert-choice", "top1"])
def test_capacity_groups_route_each_group_alone(router):
    """capacity_group_tokens G: the layer sees T/G separate batches of G tokens (capacity per group)."""
    m = tiny(router, capacity_factor=1.0, capacity_group_tokens=16, layers=1)
    x, y = batch(B=3)
    _, aux = m(x)
    assert len(aux[0]) == 3 and all(a.routing.num_tokens == 16 for a in aux[0])
    assert all(a.plan.capacity == m.blocks[0].ffn.capacity(16) for a in aux[0])
    # the same as calling the layer on each group's activations by hand
    block, layer = m.blocks[0], m.blocks[0].ffn
    x_BSH = m.drop(m.tok_emb(x) + m.pos_emb(torch.arange(16)))
    x_BSH = x_BSH + block.drop(block.attn(block.ln1(x_BSH)))
    h_TH = block.ln2(x_BSH).reshape(48, -1)
    for g, a in enumerate(aux[0]):
        _, ref = layer(h_TH[16 * g:16 * (g + 1)], x.reshape(-1)[16 * g:16 * (g + 1)])
        assert torch.equal(a.routing.expert_ids_TK, ref.routing.expert_ids_TK)
        assert torch.equal(a.plan.kept_TK, ref.plan.kept_TK)
    whole = tiny(router, capacity_factor=1.0, layers=1)
    assert whole.blocks[0].ffn.capacity(48) != layer.capacity(16)
    loss, _, stats, counts = LossAndStats(m, 1e-2, 1e-3)(x, y)
    assert stats.shape == (1, len(STAT_NAMES)) and int(counts.sum()) == sum(int(a.plan.counts_E.sum()) for a in aux[0])


def test_a_batch_that_is_not_a_multiple_of_the_group_ends_with_a_shorter_group():
    m = tiny("softk", capacity_factor=1.0, capacity_group_tokens=20, layers=1)
    _, aux = m(batch()[0])  # 48 tokens: groups of 20, 20, 8
    assert [a.routing.num_tokens for a in aux[0]] == [20, 20, 8]
    assert [a.plan.capacity for a in aux[0]] == [m.blocks[0].ffn.capacity(n) for n in (20, 20, 8)]


def test_mha_attention_is_causal_with_biases():
    m = tiny("softk", attention="mha").eval()
    mha = m.blocks[0].attn.mha
    assert mha.in_proj_bias is not None and mha.out_proj.bias is not None
    x, _ = batch(B=1)
    x2 = x.clone()
    x2[0, 8:] = (x2[0, 8:] + 1) % 256
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(x2)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-5) and not torch.allclose(a[0, 8:], b[0, 8:])
    sdpa = tiny("softk")
    n_mha = sum(p.numel() for p in m.parameters())
    assert n_mha - sum(p.numel() for p in sdpa.parameters()) == 2 * (3 * 32 + 32)  # the biases, per layer
