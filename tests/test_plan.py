"""Plan invariants, by property-based tests over random routings, capacities and policies."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from moe_routing_bench.routing.validation import ConfigError
from moe_routing_bench.routing.plan import build_plan
from moe_routing_bench.routing.routers import Routing, capacity as capacity_of


@st.composite
def routings(draw):
    T = draw(st.integers(1, 48))
    E = draw(st.integers(1, 12))
    K = draw(st.integers(1, min(E, 4)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    skew = draw(st.sampled_from(["uniform", "one-expert", "random"]))
    if skew == "one-expert":  # every token's first choice is expert 0
        ids = torch.stack([(torch.arange(K) + 0) % E for _ in range(T)])
    else:
        ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    levels = draw(st.sampled_from([2, 1000]))  # coarse weights give ties
    weights = torch.randint(1, levels, (T, K), generator=gen).float() / levels
    valid = None
    if draw(st.booleans()):
        valid = torch.rand(T, K, generator=gen) < 0.7
    cf = draw(st.sampled_from([None, 0.25, 0.5, 1.0, 1.25, 3.0]))
    policy = draw(st.sampled_from(["position", "score"]))
    layout = draw(st.sampled_from(["ragged", "padded"])) if cf is not None else "ragged"
    renorm = draw(st.booleans())
    return Routing(ids, weights, torch.full((T, E), 1.0 / E), valid), cf, policy, layout, renorm


@settings(max_examples=250, deadline=None)
@given(routings())
def test_plan_invariants(case):
    routing, cf, policy, layout, renorm = case
    plan = build_plan(routing, capacity_factor=cf, drop_policy=policy, layout=layout, renormalize_kept=renorm)
    T, K = routing.expert_ids_TK.shape
    E = routing.num_experts
    ids = routing.expert_ids_TK
    valid = torch.ones(T, K, dtype=torch.bool) if routing.valid_TK is None else routing.valid_TK
    C = capacity_of(T, K, E, cf)
    assert plan.capacity == C

    # counts sum to the number of (valid) assignments, T*K when all are valid
    assert plan.counts_E.sum().item() == valid.sum().item()
    assert plan.counts_E.tolist() == [int(((ids == e) & valid).sum()) for e in range(E)]

    for e in range(E):
        mine = (ids == e) & valid
        slots = plan.slot_TK[mine]
        # slots are unique within an expert and dense from 0
        assert sorted(slots.tolist()) == list(range(int(mine.sum())))
        kept = plan.kept_TK & mine
        assert int(kept.sum()) == plan.kept_counts_E[e].item()
        if C is not None:
            assert plan.kept_counts_E[e].item() <= C
            assert torch.equal(kept, mine & (plan.slot_TK < C))
        else:
            assert torch.equal(kept, mine)
        # drop order per policy: the kept ones come first in the policy's order
        t_idx, k_idx = torch.nonzero(mine, as_tuple=True)
        if policy == "position":
            order = sorted(range(len(t_idx)), key=lambda i: (t_idx[i].item(), k_idx[i].item()))
        else:
            w = routing.weights_TK[t_idx, k_idx]
            order = sorted(range(len(t_idx)), key=lambda i: (-w[i].item(), t_idx[i].item(), k_idx[i].item()))
        for rank, i in enumerate(order):
            assert plan.slot_TK[t_idx[i], k_idx[i]].item() == rank

    assert not (plan.kept_TK & ~valid).any()
    # rows: kept assignments map one-to-one onto packed rows, token_index_R is the inverse
    rows = plan.row_TK[plan.kept_TK]
    assert len(set(rows.tolist())) == rows.numel()
    assert torch.all(plan.row_TK[~plan.kept_TK] == -1)
    t_of_kept = torch.nonzero(plan.kept_TK, as_tuple=True)[0]
    assert torch.equal(plan.token_index_R[rows], t_of_kept)
    unused = torch.ones(plan.num_rows, dtype=torch.bool)
    unused[rows] = False
    assert torch.all(plan.token_index_R[unused] == T)
    # expert-major layout with the right offsets
    offsets = plan.offsets_E1.long()
    for e in range(E):
        mine_rows = plan.row_TK[plan.kept_TK & (ids == e)]
        if mine_rows.numel():
            assert mine_rows.min() >= offsets[e] and mine_rows.max() < offsets[e] + plan.kept_counts_E[e]
        if layout == "padded":
            assert offsets[e].item() == e * C
    if layout == "ragged":
        assert offsets[-1].item() == plan.kept_counts_E.sum().item()
    # gates: zero where dropped; renormalised kept weights keep each token's total
    assert torch.all(plan.gate_TK[~plan.kept_TK] == 0)
    w = torch.where(valid, routing.weights_TK, 0.0)
    if not renorm:
        torch.testing.assert_close(plan.gate_TK[plan.kept_TK], routing.weights_TK[plan.kept_TK])
    else:
        some = plan.kept_TK.any(-1)
        torch.testing.assert_close(plan.gate_TK.sum(-1)[some], w.sum(-1)[some])


def test_capacity_drops_later_tokens_under_position_policy():
    ids = torch.zeros(5, 1, dtype=torch.long)  # five tokens, all to expert 0 of 2
    r = Routing(ids, torch.tensor([[0.1], [0.9], [0.5], [0.7], [0.2]]), torch.full((5, 2), 0.5))
    by_position = build_plan(r, capacity=2)
    assert by_position.kept_TK.squeeze(1).tolist() == [True, True, False, False, False]
    by_score = build_plan(r, capacity=2, drop_policy="score")
    assert by_score.kept_TK.squeeze(1).tolist() == [False, True, False, True, False]


@pytest.mark.gpu
def test_plan_has_no_host_sync_on_cuda_graph_capture():
    r = Routing(torch.randint(0, 8, (64, 2), device="cuda"), torch.rand(64, 2, device="cuda"),
                torch.full((64, 8), 0.125, device="cuda"))
    build_plan(r, capacity_factor=1.0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        build_plan(r, capacity_factor=1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_policy="random"), "drop policy"),
    (dict(layout="diagonal"), "layout"),
    (dict(layout="padded"), "padded layout needs a capacity"),
    (dict(capacity_factor=-1.0), "capacity factor"),
])
def test_bad_plan_arguments(kwargs, message):
    r = Routing(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1), torch.ones(3, 2) / 2)
    with pytest.raises(ConfigError, match=message):
        build_plan(r, **kwargs)
