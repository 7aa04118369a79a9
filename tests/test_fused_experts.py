"""The triton backend's fused MoE expert path (gather in GEMM1's loads, grouped GEMMs, deterministic
combine; backward with gathers and gates in the GEMM loads) against the reference layer.

Every router, dropless and with a capacity, forward and backward, at sizes the interpreter runs in
seconds (on a GPU the same tests run on CUDA, plus sizes that fill real tiles). Tolerances: float32
activations 1e-4 relative (products are IEEE float32 on both sides, sums in another order); bf16
activations within bf16 rounding (relative error of the whole tensor < 2e-2).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from moe_routing_bench.routing import routers  # noqa: E402
from moe_routing_bench.routing.backends._triton import launch  # noqa: E402
from moe_routing_bench.routing.backends._triton.grouped_gemm_kernels import gemm_configs  # noqa: E402
from moe_routing_bench.routing.layer import MoEConfig, MoELayer  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_outputs():
    with launch.using(poison="a", tune_cache=""):
        yield


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def layers(strategy, cf, T, H, F, E, K, dtype, weight_dtype, seed=0):
    torch.manual_seed(seed)
    cfg = MoEConfig(H, F, E, K, strategy=strategy, backend="torch", capacity_factor=cf)
    ref = MoELayer(cfg).to(DEV)
    fused = MoELayer(MoEConfig(**{**cfg.__dict__, "backend": "triton", "fused_experts": True})).to(DEV)
    fused.load_state_dict(ref.state_dict())
    if weight_dtype != torch.float32:
        ref.to(weight_dtype)
        fused.to(weight_dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, H, generator=g).to(DEV, dtype)
    go = torch.randn(T, H, generator=g).to(DEV, dtype)
    return ref, fused, x, go


def run(layer, x, go):
    x = x.clone().requires_grad_()
    out, aux = layer(x, torch.arange(x.shape[0], device=x.device))
    (out.float() * go.float()).sum().add(aux.balance_loss).backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    return out.detach(), x.grad, grads, aux.plan


@pytest.mark.parametrize("strategy", routers.STRATEGIES)
@pytest.mark.parametrize("cf", [None, 0.8])
def test_fused_layer_equals_reference_forward_and_backward(strategy, cf):
    K = 1 if strategy == "top1" else 2
    ref, fused, x, go = layers(strategy, cf, T=48, H=32, F=64, E=4, K=K, dtype=torch.float32,
                               weight_dtype=torch.float32, seed=len(strategy) + (cf is not None))
    o1, gx1, g1, plan = run(fused, x, go)
    o2, gx2, g2, _ = run(ref, x, go)
    if cf is not None and strategy != "expert-choice":
        assert not bool(plan.kept_TK.all())  # the capacity really drops
    assert rel(o1, o2) < 1e-4 and rel(gx1, gx2) < 1e-4
    for name in g2:
        assert rel(g1[name], g2[name]) < 1e-4, name


def test_fused_layer_bf16_activations_and_weights_padded_layout_and_determinism():
    ref, fused, x, go = layers("softk", 1.0, T=64, H=64, F=32, E=4, K=2, dtype=torch.bfloat16,
                               weight_dtype=torch.bfloat16, seed=3)
    o1, gx1, g1, _ = run(fused, x, go)
    o2, gx2, g2, _ = run(ref, x, go)
    assert o1.dtype == torch.bfloat16 and g1["w1_EHF"].dtype == torch.bfloat16
    assert rel(o1, o2) < 2e-2 and rel(gx1, gx2) < 2e-2
    for name in g2:
        assert rel(g1[name], g2[name]) < 3e-2, name
    o3, gx3, g3, _ = run(fused, x, go)
    assert torch.equal(o1, o3) and torch.equal(gx1, gx3)  # no atomics: bit-identical run to run
    assert all(torch.equal(g1[n], g3[n]) for n in g1)


def test_fused_layer_float32_master_weights_with_bf16_activations():
    """bf16 activations, float32 parameters: the kernels read the float32 weights and cast in the load;
    weight gradients come back float32."""
    ref, fused, x, go = layers("aux-free", None, T=40, H=32, F=32, E=3, K=2, dtype=torch.bfloat16,
                               weight_dtype=torch.float32, seed=4)
    o1, gx1, g1, _ = run(fused, x, go)
    o2, gx2, g2, _ = run(ref, x, go)
    assert g1["w2_EFH"].dtype == torch.float32
    assert rel(o1, o2) < 2e-2 and rel(gx1, gx2) < 2e-2
    for name in g2:
        assert rel(g1[name], g2[name]) < 3e-2, name


def test_fused_path_is_taken_and_leaves_the_reference_path_alone():
    """The triton layer runs the fused kernels (no pack call); the torch layer never does."""
    from moe_routing_bench.routing.backends import get_backend

    b = get_backend("triton")
    assert b.fused_experts is not None and get_backend("torch").fused_experts is None
    ref, fused, x, _ = layers("softk", None, T=16, H=32, F=32, E=2, K=2, dtype=torch.float32,
                              weight_dtype=torch.float32)
    plan = fused.plan(fused.route(x)[1], x)
    assert b.fused_experts(x, fused.w1_EHF, fused.w2_EFH, plan) is not None
    other = "cuda" if DEV == "cpu" and torch.cuda.is_available() else None
    if other is None:  # tensors where Triton does not run: no fused path
        assert b.fused_experts(x.to(torch.float16), fused.w1_EHF, fused.w2_EFH, plan) is None


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,F,E,K,cf", [(4096, 512, 1024, 8, 2, None), (2048, 1024, 256, 64, 8, None),
                                          (3000, 384, 640, 16, 2, 1.0)])
def test_fused_layer_at_gpu_tile_sizes(T, H, F, E, K, cf):
    """Real Hopper tiles (BLOCK_M 64-128, BLOCK_N 128-256), uneven expert segments, bf16, tuned configs."""
    ref, fused, x, go = layers("softk", cf, T=T, H=H, F=F, E=E, K=K, dtype=torch.bfloat16,
                               weight_dtype=torch.bfloat16, seed=T)
    with launch.using(poison="a", autotune=True):
        o1, gx1, g1, _ = run(fused, x, go)
    o2, gx2, g2, _ = run(ref, x, go)
    assert rel(o1, o2) < 2e-2 and rel(gx1, gx2) < 2e-2
    for name in g2:
        assert rel(g1[name], g2[name]) < 3e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", gemm_configs(), ids=str)
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("E", [8, 256])
def test_every_gemm_config_computes_the_reference(cfg, weight_dtype, E):
    """Each grouped-GEMM config the tuner may pick, forced, forward (with and without autograd) and
    backward; E 256 with 1500 tokens leaves experts of a few rows and empty ones. (These are also the
    binaries the GPU tool's tuner then finds compiled.)"""
    ref, fused, x, go = layers("softk", 1.25, T=1500, H=512, F=768, E=E, K=2, dtype=torch.bfloat16,
                               weight_dtype=weight_dtype, seed=7)
    try:
        with launch.using(poison="a", force_config={"grouped_gemm": cfg, "grouped_wgrad": cfg}):
            with torch.no_grad():
                o0, _ = fused(x, torch.arange(x.shape[0], device=x.device))
            o1, gx1, g1, _ = run(fused, x, go)
    except Exception as exc:  # noqa: BLE001 - only a config that does not fit may be skipped (the tuner does too)
        if type(exc).__name__ == "OutOfResources":
            pytest.skip(f"does not fit in shared memory: {exc}")
        raise
    o2, gx2, g2, _ = run(ref, x, go)
    assert torch.equal(o0, o1)  # the inference forward (no pre-activation saved) is the same function
    assert rel(o1, o2) < 2e-2 and rel(gx1, gx2) < 2e-2
    for name in g2:
        assert rel(g1[name], g2[name]) < 3e-2, name
