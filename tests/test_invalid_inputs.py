"""One invalid-input policy on every backend (routing/validation.py states it; issue 12):
shapes and dtypes rejected up front with ConfigError, values (NaN/inf, out-of-range expert ids)
rejected in checked mode, T = 0 gives empty outputs. Inputs live on the GPU when there is one, so
the triton backend runs its compiled kernels there and the interpreter elsewhere."""
from __future__ import annotations

import pytest
import torch

from moe_routing_bench import MoEConfig, MoELayer, Routing
from moe_routing_bench.routing.backends import BACKENDS, get_backend
from moe_routing_bench.routing.validation import ConfigError

T, E, H, K = 6, 8, 16, 2
DEV = "cuda" if torch.cuda.is_available() else "cpu"
STRATEGIES = ["top1", "topk-hard", "softk", "hash", "expert-choice", "aux-free"]


def _k(strategy: str) -> int:
    return 1 if strategy == "top1" else K


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return get_backend(request.param)


def _good(t: int = T):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(t, E, generator=gen).to(DEV), torch.randn(t, H, generator=gen).to(DEV),
            torch.randint(0, 100, (t,), generator=gen).to(DEV))


BAD_ROUTE_CALLS = {
    "1-D logits": lambda L, ids: (L[0], "softk", K, {}),
    "3-D logits": lambda L, ids: (L[None], "softk", K, {}),
    "integer logits": lambda L, ids: (L.long(), "softk", K, {}),
    "top-k 0": lambda L, ids: (L, "softk", 0, {}),
    "top-k > E": lambda L, ids: (L, "softk", E + 1, {}),
    "top1 with k 2": lambda L, ids: (L, "top1", 2, {}),
    "temperature 0": lambda L, ids: (L, "softk", K, {"temperature": 0.0}),
    "temperature nan": lambda L, ids: (L, "softk", K, {"temperature": float("nan")}),
    "temperature inf": lambda L, ids: (L, "softk", K, {"temperature": float("inf")}),
    "token ids short": lambda L, ids: (L, "hash", K, {"token_ids_T": ids[:-1]}),
    "token ids float": lambda L, ids: (L, "hash", K, {"token_ids_T": ids.float()}),
    "bias on another device": lambda L, ids: (L, "aux-free", K, {"bias_E": torch.zeros(E, device="meta")}),
    "hash without ids": lambda L, ids: (L, "hash", K, {}),
    "bias wrong length": lambda L, ids: (L, "aux-free", K, {"bias_E": torch.zeros(E + 1, device=DEV)}),
    "bias integer": lambda L, ids: (L, "aux-free", K, {"bias_E": torch.zeros(E, dtype=torch.long, device=DEV)}),
    "unknown strategy": lambda L, ids: (L, "random", K, {}),
}


@pytest.mark.parametrize("case", list(BAD_ROUTE_CALLS))
def test_every_backend_rejects_the_same_route_calls(backend, case):
    logits, _, ids = _good()
    args = BAD_ROUTE_CALLS[case](logits, ids)
    with pytest.raises(ConfigError):
        backend.route(*args[:3], **args[3])


def _routing(backend, strategy="softk", t=T):
    logits, x, ids = _good(t)
    return backend.route(logits, strategy, _k(strategy), token_ids_T=ids, checked=True), x


BAD_ROUTINGS = {
    "float ids": lambda r: Routing(r.expert_ids_TK.float(), r.weights_TK, r.probs_TE),
    "1-D ids": lambda r: Routing(r.expert_ids_TK[:, 0], r.weights_TK, r.probs_TE),
    "weights shape": lambda r: Routing(r.expert_ids_TK, r.weights_TK[:-1], r.probs_TE),
    "integer weights": lambda r: Routing(r.expert_ids_TK, r.weights_TK.long(), r.probs_TE),
    "valid shape": lambda r: Routing(r.expert_ids_TK, r.weights_TK, r.probs_TE, torch.ones(T, K + 1, dtype=torch.bool, device=DEV)),
    "probs rows": lambda r: Routing(r.expert_ids_TK, r.weights_TK, r.probs_TE[:-1]),
}


@pytest.mark.parametrize("case", list(BAD_ROUTINGS))
def test_every_backend_rejects_inconsistent_routings(backend, case):
    r, _ = _routing(backend)
    with pytest.raises(ConfigError):
        backend.build_plan(BAD_ROUTINGS[case](r))


@pytest.mark.parametrize("what", ["x short", "x long", "x 1-D", "x integer", "y short", "y 3-D", "y integer"])
def test_every_backend_rejects_mismatched_pack_and_combine_inputs(backend, what):
    r, x = _routing(backend)
    plan = backend.build_plan(r, capacity_factor=1.0)
    y = backend.pack(x, plan)
    bad = {"x short": x[:-1], "x long": torch.cat([x, x]), "x 1-D": x[0], "x integer": x.long(),
           "y short": y[:-1], "y 3-D": y[None], "y integer": y.long()}[what]
    with pytest.raises(ConfigError, match="pack input" if what.startswith("x") else "combine input"):
        (backend.pack if what.startswith("x") else backend.combine)(bad, plan)


@pytest.mark.parametrize("where", ["one NaN", "all-NaN row", "+inf", "-inf"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_finite_logits_are_an_error_in_checked_mode(backend, strategy, where):
    logits, _, ids = _good()
    if where == "one NaN":
        logits[2, 3] = float("nan")
    elif where == "all-NaN row":
        logits[4] = float("nan")
    else:
        logits[1, 0] = float(where.replace("inf", "") + "inf")
    with pytest.raises(ConfigError, match="NaN or inf"):
        backend.route(logits, strategy, _k(strategy), token_ids_T=ids, checked=True)


def test_non_finite_aux_free_bias_is_an_error_in_checked_mode(backend):
    logits, _, _ = _good()
    bias = torch.zeros(E, device=DEV)
    bias[1] = float("nan")
    with pytest.raises(ConfigError, match="bias_E contain NaN"):
        backend.route(logits, "aux-free", K, bias_E=bias, checked=True)


@pytest.mark.parametrize("bad_id", [E, E + 1, -1, 2**40])
@pytest.mark.parametrize("cf", [None, 1.0])
def test_out_of_range_expert_ids_are_an_error_in_checked_mode(backend, bad_id, cf):
    r, _ = _routing(backend)
    ids = r.expert_ids_TK.clone()
    ids[3, 1] = bad_id
    with pytest.raises(ConfigError, match=f"expert id {bad_id} is out of range for {E} experts"):
        backend.build_plan(Routing(ids, r.weights_TK, r.probs_TE), capacity_factor=cf, checked=True)


def test_non_finite_gate_weights_are_an_error_in_checked_mode(backend):
    r, _ = _routing(backend)
    w = r.weights_TK.clone()
    w[0, 0] = float("inf")
    with pytest.raises(ConfigError, match="gate weights contain NaN or inf"):
        backend.build_plan(Routing(r.expert_ids_TK, w, r.probs_TE), checked=True)


def test_invalid_slots_may_hold_any_id_in_checked_mode(backend):
    """expert-choice marks unpicked slots with valid_TK; only valid slots' ids are checked."""
    r, _ = _routing(backend, "expert-choice")
    ids = torch.where(r.valid_TK, r.expert_ids_TK, 10 * E)
    plan = backend.build_plan(Routing(ids, r.weights_TK, r.probs_TE, r.valid_TK), checked=True)
    assert int(plan.kept_TK.sum()) == int(r.valid_TK.sum())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cf, layout", [(None, "ragged"), (1.25, "ragged"), (1.25, "padded")])
def test_empty_batch_gives_empty_outputs(backend, strategy, cf, layout):
    r, x = _routing(backend, strategy, t=0)
    k = r.expert_ids_TK.shape[1]
    assert r.expert_ids_TK.shape == (0, k) and r.weights_TK.shape == (0, k) and r.probs_TE.shape == (0, E)
    plan = backend.build_plan(r, capacity_factor=cf, layout=layout, checked=True)
    assert plan.counts_E.tolist() == [0] * E and plan.row_TK.shape == (0, k)
    y = backend.pack(x, plan)
    assert y.shape == (plan.num_rows, H)
    out = backend.combine(y, plan)
    assert out.shape == (0, H) and out.dtype == x.dtype


@pytest.mark.parametrize("strategy, cf", [("softk", None), ("softk", 1.25), ("top1", 1.0), ("expert-choice", None)])
def test_moe_layer_forward_and_backward_on_an_empty_batch(backend, strategy, cf):
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(H, 2 * H, E, K, strategy=strategy, backend=backend.name, capacity_factor=cf)).to(DEV)
    x = torch.randn(0, H, device=DEV, requires_grad=True)
    out, aux = layer(x)
    assert out.shape == (0, H)
    (out.sum() + aux.z_loss.nan_to_num()).backward()
    assert x.grad.shape == (0, H)
