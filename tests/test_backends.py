"""Every backend computes the reference's functions: ids exact, values within dtype tolerance."""
import pytest
import torch

from moe_routing_bench.routing.backends import BACKENDS, available_backends, get_backend
from moe_routing_bench.routing.validation import ConfigError

OTHER_BACKENDS = [b for b in BACKENDS if b != "torch"]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def _inputs(T=77, E=12, H=40, dtype=torch.bfloat16, seed=3):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=gen)
    logits[5] = logits[5, 0]  # a row of exact ties
    return logits, torch.randn(T, H, generator=gen).to(dtype), torch.randint(0, 1000, (T,), generator=gen)


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER_BACKENDS)
@pytest.mark.parametrize("strategy, k, cf, policy, dtype", [
    ("softk", 2, None, "position", torch.bfloat16),
    ("top1", 1, 1.0, "score", torch.float32),
    ("aux-free", 3, 0.75, "position", torch.float32),
])
def test_backend_matches_reference(name, strategy, k, cf, policy, dtype):
    if name not in available_backends():
        pytest.fail(f"backend {name} is registered but unavailable here")
    ref, other = get_backend("torch"), get_backend(name)
    logits, x, tok = _inputs(dtype=dtype)
    r_ref = ref.route(logits, strategy, k, token_ids_T=tok)
    r = other.route(logits, strategy, k, token_ids_T=tok)
    assert torch.equal(r.expert_ids_TK, r_ref.expert_ids_TK)
    torch.testing.assert_close(r.weights_TK, r_ref.weights_TK, **TOL[torch.float32])
    p_ref = ref.build_plan(r_ref, capacity_factor=cf, drop_policy=policy)
    p = other.build_plan(r, capacity_factor=cf, drop_policy=policy)
    for field in ("counts_E", "kept_counts_E", "offsets_E1", "kept_TK", "row_TK", "token_index_R"):
        assert torch.equal(getattr(p, field), getattr(p_ref, field)), field
    packed_ref = ref.pack(x, p_ref)
    packed = other.pack(x, p)
    filled = p_ref.token_index_R < p_ref.num_tokens
    assert torch.equal(packed[filled], packed_ref[filled])
    torch.testing.assert_close(other.combine(packed_ref, p), ref.combine(packed_ref, p_ref), **TOL[dtype])


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("cuda-magic")


def test_torch_and_compile_are_always_available():
    assert {"torch", "compile"} <= set(available_backends())
