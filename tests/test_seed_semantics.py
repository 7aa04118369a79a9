"""The older tool's semantics (issue 14, DESIGN section 2b), factor by factor, on hand-computed cases;
gradients where the older tool has none; both metric conventions; every backend the same function."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import moe_routing_bench as mrb
from moe_routing_bench.routing import metrics, routers
from moe_routing_bench.routing.layer import MoEConfig, MoELayer
from moe_routing_bench.routing.plan import build_plan
from moe_routing_bench.routing.routers import SEED_FACTORS, route, seed_balance_loss, seed_renormalize_kept

LOGITS = torch.tensor([[1.0, 2.0, 0.0, -1.0], [3.0, 3.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.5]])
SIG = 1 / (1 + math.exp(-2.0))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # softmax([a, a - 2]) = [SIG, 1 - SIG]


def test_factor_names_validated_and_exported():
    assert mrb.SEED_FACTORS == SEED_FACTORS == ("top1_gate", "topk_hard_weights", "hash_key", "expert_choice",
                                                "balance_loss")
    assert mrb.check_seed_semantics(("Balance-Loss", "top1_gate")) == ("top1_gate", "balance_loss")
    assert mrb.check_seed_semantics("all") == SEED_FACTORS
    assert MoEConfig(8, 16, 4, 2, seed_semantics=["hash-key"]).seed_semantics == ("hash_key",)
    with pytest.raises(mrb.ConfigError, match="unknown seed-semantics factor 'z_loss'"):
        MoEConfig(8, 16, 4, 2, seed_semantics=("z_loss",))
    with pytest.raises(mrb.ConfigError):
        route(LOGITS, "softk", 2, seed_semantics=("bogus",))
    assert MoEConfig(8, 16, 4, 2).seed_semantics == ()  # ours is the default
    with pytest.raises(mrb.ConfigError, match="router_init_std"):
        MoEConfig(8, 16, 4, 2, router_init_std=0.0)


def test_seed_top1_weight_one_and_no_router_gradient():
    logits = LOGITS.clone().requires_grad_()
    r = route(logits, "top1", 1, seed_semantics=("top1_gate",))
    assert r.expert_ids_TK.tolist() == [[1], [0], [3]]
    assert r.weights_TK.tolist() == [[1.0], [1.0], [1.0]]
    assert not r.weights_TK.requires_grad
    ours = route(logits, "top1", 1)
    assert ours.expert_ids_TK.tolist() == [[1], [0], [3]] and ours.weights_TK.requires_grad
    assert ours.weights_TK[0, 0] < 1


def test_seed_topk_hard_is_an_unweighted_sum_without_renormalisation():
    r = route(LOGITS, "topk-hard", 2, seed_semantics=("topk_hard_weights",))
    assert r.expert_ids_TK.tolist() == [[1, 0], [0, 1], [3, 0]]
    assert r.weights_TK.tolist() == [[1.0, 1.0]] * 3 and not r.weights_TK.requires_grad
    # capacity 1, token order: expert 0 keeps t0 (t1, t2 dropped), expert 1 keeps t0 (t1 dropped), expert 3 keeps t2
    renorm = seed_renormalize_kept(routers.seed_route_factor("topk-hard", ("topk_hard_weights",)), True)
    assert renorm is False
    plan = build_plan(r, capacity=1, renormalize_kept=renorm)
    assert plan.kept_TK.tolist() == [[True, True], [False, False], [True, False]]
    assert plan.gate_TK.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    ours = build_plan(route(LOGITS, "topk-hard", 2), capacity=1, renormalize_kept=True)
    assert ours.gate_TK.tolist() == [[0.5, 0.5], [0.0, 0.0], [1.0, 0.0]]
    # identity experts: the output is k times the token for the older tool, the token for ours
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0], [3.0, 0.0]])
    full = build_plan(r)
    torch.testing.assert_close(mrb.combine(mrb.pack(x, full), full), 2 * x)
    full_ours = build_plan(route(LOGITS, "topk-hard", 2))
    torch.testing.assert_close(mrb.combine(mrb.pack(x, full_ours), full_ours), x)


def test_seed_hash_keys_on_row_position():
    # E = 8: 1315423911 = 7 (mod 8), 2654435761 = 1, 97 = 1, so base_t = (7t + 1) mod 8, second = base + 1
    a = route(torch.randn(5, 8), "hash", 2, token_ids_T=torch.tensor([9, 9, 9, 9, 9]), seed_semantics=("hash_key",))
    b = route(torch.randn(5, 8), "hash", 2, seed_semantics=("hash_key",))  # no token ids needed
    expected = [[1, 2], [0, 1], [7, 0], [6, 7], [5, 6]]
    assert a.expert_ids_TK.tolist() == expected and b.expert_ids_TK.tolist() == expected
    assert a.weights_TK.tolist() == [[0.5, 0.5]] * 5
    # E = 97 divides 97: both choices are the same expert (the older tool's defect, kept)
    ids = routers.seed_hash_experts(4, 97, 2)
    assert torch.equal(ids[:, 0], ids[:, 1])
    assert ids[0, 0].item() == 2654435761 % 97 and ids[3, 0].item() == (3 * 1315423911 + 2654435761) % 97
    # ours keys on the token id: equal ids, equal experts, whatever the position
    ours = route(torch.randn(5, 8), "hash", 2, token_ids_T=torch.tensor([9, 9, 9, 9, 9]))
    assert len({tuple(row) for row in ours.expert_ids_TK.tolist()}) == 1


def test_factors_that_change_each_router():
    assert mrb.seed_factors_changing("top1") == {"top1_gate", "balance_loss"}
    assert mrb.seed_factors_changing("topk_hard") == {"topk_hard_weights", "balance_loss"}
    assert mrb.seed_factors_changing("softk") == mrb.seed_factors_changing("aux-free") == {"balance_loss"}
    assert mrb.seed_factors_changing("expert-choice") == {"expert_choice", "balance_loss"}
    assert mrb.seed_factors_changing("hash") == {"hash_key"}
    # why not the balance loss for hash: its experts and weights do not depend on the logits at all
    ids = torch.tensor([3, 1, 4, 1, 5])
    for semantics in ((), ("hash_key",)):
        a = route(torch.randn(5, 8), "hash", 2, token_ids_T=ids, seed_semantics=semantics)
        b = route(100 * torch.randn(5, 8), "hash", 2, token_ids_T=ids, seed_semantics=semantics)
        assert torch.equal(a.expert_ids_TK, b.expert_ids_TK) and torch.equal(a.weights_TK, b.weights_TK)
    with pytest.raises(mrb.ConfigError):
        mrb.seed_factors_changing("dense")


EC_LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, 1.0], [1.5, 2.0, 4.0], [0.0, 0.0, -1.0]])


def test_seed_expert_choice_hand_computed():
    # T=4, E=3, k=2, cf 0.5: every expert picks ceil(0.5*4*2/3) = 2 tokens by logit:
    # e0 -> t0 (2.0), t2 (1.5); e1 -> t1 (3.0), t2 (2.0); e2 -> t2 (4.0), t1 (1.0); t3: nobody
    logits = EC_LOGITS.clone().requires_grad_()
    r = route(logits, "expert-choice", 2, capacity_factor=0.5, seed_semantics=("expert_choice",))
    assert r.expert_ids_TK.tolist() == [
        [0, 1],  # t0: picked by e0 only; the empty slot goes to the lowest non-picker (e1), gate 0
        [1, 2],  # t1: e1 (3.0), e2 (1.0)
        [2, 1],  # t2: top-2 of its three pickers
        [0, 1],  # t3: nobody picked it: softk fallback, tie -> lower id
    ]
    expected = torch.tensor([[1.0, 0.0], [SIG, 1 - SIG], [SIG, 1 - SIG], [0.5, 0.5]])
    torch.testing.assert_close(r.weights_TK, expected)
    assert r.valid_TK is None and not r.causal_safe
    assert r.fallback_T.tolist() == [False, False, False, True]
    # then token-choice capacity C = ceil(0.5*4*2/3) = 2, token order: e1 gets t0 (the gate-0 slot), t1, then full
    plan = build_plan(r, capacity_factor=0.5)
    assert plan.capacity == 2
    assert plan.kept_TK.tolist() == [[True, True], [True, True], [True, False], [True, False]]
    r.weights_TK.sum().backward()  # the gates are softmaxes of logits: the router learns
    assert logits.grad.abs().sum() > 0


def test_seed_expert_choice_caps_each_expert_at_64_tokens():
    assert routers.seed_expert_choice_tokens(200, 2, 2, 1.0) == 64
    assert routers.seed_expert_choice_tokens(10, 2, 8, 1.25) == 4  # ceil(1.25*10*2/8) = 4
    assert routers.seed_expert_choice_tokens(3, 2, 1, 2.0) == 3  # at most T
    # T=8192, E=8: at most 8*64 tokens are picked, so at least 93.75% take the softk fallback
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8192, 8, generator=g)
    r = route(logits, "expert-choice", 2, capacity_factor=1.25, seed_semantics=("expert_choice",))
    softk = route(logits, "softk", 2)
    same = (r.expert_ids_TK == softk.expert_ids_TK).all(-1) & torch.isclose(r.weights_TK, softk.weights_TK).all(-1)
    assert same.float().mean() >= 0.9375
    assert r.fallback_T.float().mean() >= 0.9375 and torch.equal(r.fallback_T & ~same, torch.zeros_like(same))


def test_seed_balance_loss_on_kept_counts_hand_computed():
    # f = [0.75, 0.25, 0, 0]: (0.5^2 + 0 + 0.25^2 + 0.25^2) = 0.375
    torch.testing.assert_close(seed_balance_loss(torch.tensor([3, 1, 0, 0], dtype=torch.int32)), torch.tensor(0.375))
    assert seed_balance_loss(torch.tensor([2, 2, 2, 2])).item() == 0.0
    assert seed_balance_loss(torch.tensor([0, 0, 0, 0])).item() == 0.0
    torch.testing.assert_close(seed_balance_loss(torch.tensor([5, 0, 0, 0])), torch.tensor(0.75))  # 1 - 1/E


def _layer(strategy, k, seed=(), cf=None, backend="torch", renorm=False, **kw):
    torch.manual_seed(0)
    return MoELayer(MoEConfig(8, 16, 4, k, strategy=strategy, backend=backend, capacity_factor=cf,
                              renormalize_kept=renorm, seed_semantics=seed, **kw))


def _grad_of_router(layer, x, use_balance=False):
    out, aux = layer(x)
    loss = out.square().sum() + (aux.balance_loss if use_balance else 0.0)
    if loss.requires_grad:
        loss.backward()
    return layer.router.weight.grad, aux


@pytest.mark.parametrize("strategy,k,factor", [("top1", 1, "top1_gate"), ("topk-hard", 2, "topk_hard_weights")])
def test_layer_router_gets_no_gradient_in_seed_mode(strategy, k, factor):
    x = torch.randn(12, 8)
    grad, aux = _grad_of_router(_layer(strategy, k, seed=(factor, "balance_loss"), cf=1.25), x, use_balance=True)
    assert grad is None  # neither the output nor the older tool's balance loss reach the router
    assert not aux.balance_loss.requires_grad
    grad_ours, aux_ours = _grad_of_router(_layer(strategy, k, cf=1.25), x, use_balance=True)
    assert grad_ours is not None and grad_ours.abs().sum() > 0  # our balance loss (and top1's gate) train it
    assert aux_ours.balance_loss.requires_grad


def test_layer_balance_loss_factor_alone():
    x = torch.randn(12, 8)
    layer = _layer("softk", 2, seed=("balance_loss",), cf=1.0)
    out, aux = layer(x)
    torch.testing.assert_close(aux.balance_loss, seed_balance_loss(aux.plan.kept_counts_E))
    assert not aux.balance_loss.requires_grad
    # a seed top1 router with OUR balance loss learns from that loss only
    grad, _ = _grad_of_router(_layer("top1", 1, seed=("top1_gate",), cf=1.0), x, use_balance=True)
    assert grad is not None and grad.abs().sum() > 0


def test_layer_seed_outputs_equal_hand_sums_of_experts():
    """Dropless: the older tool's topk-hard output is the plain sum of the k experts' outputs."""
    x = torch.randn(6, 8)
    layer = _layer("topk-hard", 2, seed=("topk_hard_weights",))
    out, aux = layer(x)
    w1, w2 = layer.w1_EHF.detach(), layer.w2_EFH.detach()
    ffn = [torch.nn.functional.gelu(x @ w1[e]) @ w2[e] for e in range(4)]
    expected = torch.stack([sum(ffn[e][t] for e in aux.routing.expert_ids_TK[t].tolist()) for t in range(6)])
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)


def test_seed_expert_choice_layer_uses_token_choice_capacity():
    ours, seed = _layer("expert-choice", 2, cf=1.0), _layer("expert-choice", 2, seed=("expert_choice",), cf=1.0)
    assert ours.capacity(64) == 32 and seed.capacity(64) == 32  # ceil(1*64*2/4)
    wide_ours, wide_seed = _layer("expert-choice", 2, cf=4.0), _layer("expert-choice", 2, seed=("expert_choice",), cf=4.0)
    assert wide_ours.capacity(3) == 3 and wide_seed.capacity(3) == 6  # ours is capped at T, token choice is not
    assert _layer("expert-choice", 2, seed=("expert_choice",)).capacity(64) is None  # dropless stays dropless
    assert not seed.causal_safe
    x = torch.randn(64, 8)
    _, aux = seed(x)
    assert aux.routing.valid_TK is None and aux.plan.capacity == 32


def test_router_bias_and_init_std():
    plain = _layer("softk", 2)
    assert plain.router.bias is None
    layer = MoELayer(MoEConfig(256, 16, 8, 2, router_bias=True, router_init_std=256 ** -0.5))
    assert torch.equal(layer.router.bias, torch.zeros(8))
    assert abs(layer.router.weight.std().item() / 256 ** -0.5 - 1) < 0.1  # 2048 samples: ~1.6% sampling error
    small = MoELayer(MoEConfig(256, 16, 8, 2))
    assert abs(small.router.weight.std().item() / (0.1 / 16) - 1) < 0.1
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 100.0]))  # the bias enters the logits
    _, aux = layer(torch.randn(5, 256))
    assert (aux.routing.expert_ids_TK[:, 0] == 7).all()


@pytest.mark.parametrize("strategy,k,factor", [
    ("top1", 1, "top1_gate"), ("topk-hard", 2, "topk_hard_weights"), ("hash", 2, "hash_key"),
    ("expert-choice", 2, "expert_choice"),
])
@pytest.mark.parametrize("device", DEVICES)
def test_every_backend_routes_the_seed_variants_alike(strategy, k, factor, device):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 8, generator=g).to(device)
    logits[3] = logits[5]  # ties across tokens
    ref = route(logits, strategy, k, capacity_factor=1.0, seed_semantics=(factor,))
    for name in mrb.available_backends():
        got = mrb.get_backend(name).route(logits, strategy, k, capacity_factor=1.0, seed_semantics=(factor,))
        assert torch.equal(got.expert_ids_TK, ref.expert_ids_TK), name
        torch.testing.assert_close(got.weights_TK, ref.weights_TK, msg=name)
        assert got.causal_safe == ref.causal_safe


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_seed_preset_same_on_backends(backend, device):
    if backend not in mrb.available_backends():
        pytest.skip(f"{backend} unavailable")
    x = torch.randn(16, 8, device=device)
    outs = [
        _layer(s, k, seed=SEED_FACTORS, cf=1.0, backend=b, renorm=True).to(device)(x)[0]
        for s, k in (("softk", 2), ("topk-hard", 2), ("top1", 1))
        for b in ("torch", backend)
    ]
    for a, b in zip(outs[::2], outs[1::2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- metrics

def test_both_metric_conventions_hand_computed():
    torch.testing.assert_close(metrics.load_cv_tensor(torch.tensor([2, 2])), torch.tensor(0.0))
    torch.testing.assert_close(metrics.load_cv_tensor(torch.tensor([2, 0])), torch.tensor(1.0))  # kept counts
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.2, 0.2]])
    # normalised: [ln 2, 0, ln 2]; the third row's gates sum to 0.4 and are normalised first
    torch.testing.assert_close(metrics.gate_entropy_selected(w), torch.tensor(2 * math.log(2) / 3))
    valid = torch.tensor([[True, False], [True, True], [True, True]])
    torch.testing.assert_close(metrics.gate_entropy_selected(w, valid), torch.tensor(math.log(2) / 3))
    torch.testing.assert_close(metrics.mean_combine_weight(torch.tensor([[0.3, 0.0], [1.0, 1.0]])), torch.tensor(1.15))
    torch.testing.assert_close(metrics.mean_top1_prob(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])),
                               torch.tensor(0.55))
    p = torch.tensor([[0.5, 0.5]])
    torch.testing.assert_close(metrics.gate_entropy(p), torch.tensor(math.log(2)))


def test_training_statistics_both_conventions_and_per_layer():
    from train.model import STAT_NAMES, LossAndStats, ModelConfig, MoETransformer, routing_stats, stats_record

    for name in ("load_cv", "load_cv_kept", "gate_entropy", "gate_entropy_selected", "mean_combine_weight",
                 "mean_top1_prob"):
        assert name in STAT_NAMES
    col = {n: i for i, n in enumerate(STAT_NAMES)}
    x = torch.randn(32, 8)
    _, aux = _layer("topk-hard", 2, seed=("topk_hard_weights",))(x)
    vec, _ = routing_stats(aux)
    assert vec[col["mean_combine_weight"]].item() == 2.0  # k, dropless
    assert vec[col["gate_entropy_selected"]].item() == pytest.approx(math.log(2))
    _, aux = _layer("top1", 1, cf=1.0)(x)
    vec, _ = routing_stats(aux)
    kept = aux.plan.gate_TK.sum(-1)
    assert vec[col["mean_combine_weight"]].item() == pytest.approx(kept.mean().item())
    assert vec[col["mean_top1_prob"]].item() == pytest.approx(aux.routing.probs_TE.max(-1).values.mean().item())
    assert vec[col["load_cv_kept"]].item() == pytest.approx(metrics.load_stats(aux.plan.kept_counts_E)["load_cv"])
    assert vec[col["load_cv"]].item() == pytest.approx(metrics.load_stats(aux.plan.counts_E)["load_cv"])

    values = list(range(2 * len(STAT_NAMES)))
    rec = stats_record(values, 2)
    n = len(STAT_NAMES)
    assert rec["load_cv_per_layer"] == [col["load_cv"], n + col["load_cv"]]
    assert rec["load_cv"] == col["load_cv"] + n / 2
    assert stats_record([], 0)["load_cv"] is None

    model = MoETransformer(ModelConfig(vocab_size=16, seq_len=8, layers=2, dim=16, heads=2, num_experts=4, top_k=2,
                                       router="softk", capacity_factor=1.0))
    step = LossAndStats(model, alpha=0.01, beta=0.0)
    idx = torch.randint(0, 16, (2, 8))
    _, _, stats, _ = step(idx, idx)
    assert stats.shape == (2, n) and torch.isfinite(stats).all()


# ------------------------------------------------------------------------------- random cases vs loops
def _expert_choice_loop(logits, k, cf):
    """The older tool's expert-choice written token by token in plain Python (no ties in the input)."""
    T, E = len(logits), len(logits[0])
    c = min(math.ceil(cf * T * k / E - 1e-9), T, 64)
    picks = [set() for _ in range(T)]
    for e in range(E):
        for t in sorted(range(T), key=lambda t: -logits[t][e])[:c]:
            picks[t].add(e)
    ids, gates = [], []
    for t in range(T):
        pool = picks[t] or set(range(E))
        best = sorted(pool, key=lambda e: -logits[t][e])[:k]
        rest = [e for e in range(E) if e not in best]
        z = [math.exp(logits[t][e]) for e in best]
        ids.append(best + rest[:k - len(best)])
        gates.append([v / sum(z) for v in z] + [0.0] * (k - len(best)))
    return ids, gates


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 40), E=st.integers(2, 9), k=st.integers(1, 3), cf=st.sampled_from([0.25, 0.5, 1.0, 1.25]),
       seed=st.integers(0, 2**16))
def test_seed_expert_choice_matches_a_per_token_loop(T, E, k, cf, seed):
    k = min(k, E)
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
    r = route(logits, "expert-choice", k, capacity_factor=cf, seed_semantics=("expert_choice",))
    ids, gates = _expert_choice_loop(logits.tolist(), k, cf)
    assert r.expert_ids_TK.tolist() == ids
    torch.testing.assert_close(r.weights_TK, torch.tensor(gates), rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 3000), E=st.integers(1, 130), k=st.integers(1, 4))
def test_seed_hash_matches_the_formula_in_python_integers(T, E, k):
    k = min(k, E)
    ids = routers.seed_hash_experts(T, E, k)
    for t in (0, T // 2, T - 1):
        base = (t * 1315423911 + 2654435761) % E
        assert ids[t].tolist() == [(base + j * 97) % E for j in range(k)]


def test_fallback_rate_logged_for_seed_expert_choice_only():
    from train.model import STAT_NAMES, routing_stats

    col = STAT_NAMES.index("fallback_rate")
    x = torch.randn(64, 8)
    _, aux = _layer("expert-choice", 2, seed=("expert_choice",), cf=0.25)(x)  # each expert picks ceil(8) = 8 tokens
    vec, _ = routing_stats(aux)
    assert vec[col].item() == pytest.approx(aux.routing.fallback_T.float().mean().item())
    assert 32 / 64 <= vec[col].item() < 1  # at most 4 * 8 of 64 tokens were picked
    _, aux = _layer("expert-choice", 2, cf=1.0)(x)
    assert routing_stats(aux)[0][col].item() == 0.0
