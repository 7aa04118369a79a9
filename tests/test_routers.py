"""Router semantics on hand-computed cases, tie-breaking, gradients and input errors."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from moe_routing_bench.routing import routers
from moe_routing_bench.routing.validation import ConfigError, check_logits
from moe_routing_bench.routing.routers import STRATEGIES, balance_loss, capacity, route, topk_lowest_id, z_loss

LOGITS = torch.tensor([[1.0, 2.0, 0.0, -1.0], [3.0, 3.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.5]])


def test_top1_switch_weight_is_full_softmax_prob_not_renormalised():
    r = route(LOGITS, "top1", 1)
    assert r.expert_ids_TK.squeeze(1).tolist() == [1, 0, 3]  # row 1: three-way tie, lowest id wins
    p = torch.softmax(LOGITS, -1)
    expected = p[torch.arange(3), torch.tensor([1, 0, 3])]
    torch.testing.assert_close(r.weights_TK.squeeze(1), expected)
    assert r.weights_TK[0, 0] < 1.0


def test_topk_hard_uniform_weights_and_tie_order():
    r = route(LOGITS, "topk-hard", 2)
    assert r.expert_ids_TK.tolist() == [[1, 0], [0, 1], [3, 0]]
    assert torch.all(r.weights_TK == 0.5)


def test_softk_weights_softmax_over_selected_with_temperature():
    r = route(LOGITS, "softk", 2, temperature=2.0)
    assert r.expert_ids_TK[0].tolist() == [1, 0]
    e1, e0 = math.exp(2.0 / 2), math.exp(1.0 / 2)
    torch.testing.assert_close(r.weights_TK[0], torch.tensor([e1 / (e1 + e0), e0 / (e1 + e0)]))
    # equals softmax -> top-k -> renormalise at temperature 1
    r1 = route(LOGITS, "softk", 2)
    p = torch.softmax(LOGITS, -1).gather(-1, r1.expert_ids_TK)
    torch.testing.assert_close(r1.weights_TK, p / p.sum(-1, keepdim=True))


def test_softk_without_renormalisation_uses_full_softmax_probs():
    r = route(LOGITS, "softk", 2, renormalize=False)
    p = torch.softmax(LOGITS, -1).gather(-1, r.expert_ids_TK)
    torch.testing.assert_close(r.weights_TK, p)
    assert torch.all(r.weights_TK.sum(-1) < 1)


def test_hash_depends_on_token_id_not_position():
    ids = torch.tensor([5, 7, 5, 123456])
    r = route(torch.randn(4, 16), "hash", 3, token_ids_T=ids)
    assert torch.equal(r.expert_ids_TK[0], r.expert_ids_TK[2])
    for row in r.expert_ids_TK.tolist():
        assert len(set(row)) == 3  # distinct experts
        assert row[1] == (row[0] + 1) % 16 and row[2] == (row[0] + 2) % 16
    assert torch.all(r.weights_TK == 1 / 3)
    # pinned values: the hash must never change silently (it decides which expert learns what)
    assert r.expert_ids_TK[:, 0].tolist() == routers._hash_experts(ids, 16, 1)[:, 0].tolist()
    h = (5 * 2654435761) & 0xFFFFFFFF
    assert r.expert_ids_TK[0, 0].item() == (h ^ (h >> 16)) % 16


def test_expert_choice_each_expert_takes_its_top_tokens():
    logits = torch.tensor([[4.0, 0.0], [3.0, 1.0], [0.0, 2.0], [1.0, 5.0]])
    r = route(logits, "expert-choice", 1, capacity_factor=1.0)  # C = ceil(1 * 4 * 1 / 2) = 2
    p = torch.softmax(logits, -1)
    assert r.valid_TK.tolist() == [[True, False], [True, False], [False, True], [False, True]]
    torch.testing.assert_close(r.weights_TK, torch.where(r.valid_TK, p, 0.0))
    assert not r.causal_safe
    r2 = route(logits, "expert-choice", 1, capacity_factor=2.0)  # C = 4: every expert takes every token
    assert r2.valid_TK.all()


def test_aux_free_selects_on_biased_sigmoid_and_weights_unbiased_scores():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    r = route(logits, "aux-free", 1)
    assert r.expert_ids_TK.item() == 0
    biased = route(logits, "aux-free", 2, bias_E=torch.tensor([0.0, 0.0, 1.0]))
    assert biased.expert_ids_TK.tolist() == [[2, 0]]
    s = torch.sigmoid(logits[0, [2, 0]])
    torch.testing.assert_close(biased.weights_TK[0], s / s.sum())
    bias = routers.update_aux_free_bias(torch.zeros(3), torch.tensor([5, 1, 0]), 0.1)
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.1, 0.1]))


def test_aux_free_bias_batched_over_layers_equals_per_layer():
    gen = torch.Generator().manual_seed(3)
    bias_LE = torch.randn(4, 7, generator=gen)
    counts_LE = torch.randint(0, 50, (4, 7), generator=gen)
    counts_LE[2] = 9  # a balanced layer: its bias does not move
    batched = routers.update_aux_free_bias(bias_LE, counts_LE, 0.01)
    per_layer = torch.stack([routers.update_aux_free_bias(b, c, 0.01) for b, c in zip(bias_LE, counts_LE)])
    torch.testing.assert_close(batched, per_layer, rtol=0, atol=0)
    torch.testing.assert_close(batched[2], bias_LE[2], rtol=0, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.data())
def test_topk_lowest_id_matches_stable_sort(T, E, data):
    k = data.draw(st.integers(1, E))
    levels = data.draw(st.integers(1, 5))  # few distinct values: many ties
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    scores = torch.randint(-levels, levels + 1, (T, E), generator=gen).float() * 0.5
    values, ids = topk_lowest_id(scores, k)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(ids, order)
    assert torch.equal(values, scores.gather(-1, order))


def test_topk_lowest_id_orders_negative_and_signed_zero():
    scores = torch.tensor([[-0.0, 0.0, -2.0, -1.0, -1e-30]])
    _, ids = topk_lowest_id(scores, 5)
    assert ids.tolist() == [[0, 1, 4, 3, 2]]


@pytest.mark.parametrize("strategy", ["top1", "softk", "expert-choice", "aux-free"])
def test_weights_carry_gradient_to_the_logits(strategy):
    logits = torch.randn(32, 8, requires_grad=True)
    r = route(logits, strategy, 1 if strategy == "top1" else 2)
    (r.weights_TK * torch.randn_like(r.weights_TK)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", ["topk-hard", "hash"])
def test_fixed_weights_carry_no_gradient(strategy):
    logits = torch.randn(8, 4, requires_grad=True)
    r = route(logits, strategy, 2, token_ids_T=torch.arange(8))
    assert not r.weights_TK.requires_grad


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_balance_loss_carries_gradient_for_every_strategy(strategy):
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    r = route(logits, strategy, 1 if strategy == "top1" else 2, token_ids_T=torch.arange(64))
    loss = balance_loss(r)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    f_E = torch.bincount(r.expert_ids_TK.flatten(), minlength=8).float() / r.expert_ids_TK.numel()
    torch.testing.assert_close(loss.detach(), 8 * (f_E * r.probs_TE.detach().mean(0)).sum())


def test_balance_loss_hand_computed():
    # two tokens both to expert 0; router probs uniform over 2 experts: f = [1, 0], P = [.5, .5]
    r = routers.Routing(torch.tensor([[0], [0]]), torch.ones(2, 1), torch.full((2, 2), 0.5))
    assert balance_loss(r).item() == pytest.approx(2 * (1 * 0.5))


def test_z_loss_hand_computed():
    assert z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)


def test_capacity_rounding():
    assert capacity(100, 1, 1, 1.1) == 110  # exact, not 111 from float error
    assert capacity(16384, 2, 128, 1.25) == 320
    assert capacity(10, 1, 128, 0.01) == 1  # at least 1
    assert capacity(10, 1, 4, None) is None
    assert capacity(3, 1, 2, 1.0) == 2  # ceil(1.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="softk", top_k=5), "top-k"),
    (dict(strategy="softk", top_k=0), "top-k"),
    (dict(strategy="top1", top_k=2), "exactly one"),
    (dict(strategy="bogus", top_k=1), "unknown routing strategy"),
    (dict(strategy="hash", top_k=1), "token ids"),
    (dict(strategy="softk", top_k=1, temperature=0.0), "temperature"),
])
def test_bad_router_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        route(torch.randn(4, 4), kwargs.pop("strategy"), kwargs.pop("top_k"), **kwargs)


def test_bad_capacity_factor_and_logits():
    with pytest.raises(ConfigError, match="capacity factor"):
        capacity(4, 1, 2, 0.0)
    with pytest.raises(ConfigError, match="NaN or inf"):
        check_logits(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ConfigError, match="shape"):
        route(torch.randn(4), "softk", 1)


def test_seed_spellings_are_accepted():
    assert routers.canonical_strategy("TopK_Hard") == "topk-hard"
    assert routers.canonical_strategy("expert_choice") == "expert-choice"
