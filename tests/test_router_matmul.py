"""router_logits: float32 router logits and gradients from bf16 GEMMs (weight and gradient split in
two bf16 terms), against a float64 reference with error bounds that a plain bf16 GEMM misses."""
import pytest
import torch

from moe_routing_bench.routing.router_matmul import router_logits

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _inputs(seed: int, T: int = 64, H: int = 96, E: int = 8, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, H, generator=g) * torch.logspace(-2, 1, H)).to(torch.bfloat16)  # mixed scales
    w = torch.randn(E, H, generator=g) * 0.05
    b = torch.randn(E, generator=g)
    grad = torch.randn(T, E, generator=g) * torch.logspace(-3, 0, E)
    return x.to(device), w.to(device), b.to(device), grad.to(device)


def _reference(x, w, b, grad):
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    out = x64 @ w64.T + b.double()
    out.backward(grad.double())
    return out.detach(), x64.grad, w64.grad


def _run(x, w, b, grad, **kw):
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = router_logits(xg, wg, b, **kw)
    out.backward(grad)
    return out, xg.grad, wg.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_path_is_float32_accurate(device, seed):
    x, w, b, grad = _inputs(seed, device=device)
    out, gx, gw = _run(x, w, b, grad, split_bf16=True)
    ref, ref_gx, ref_gw = _reference(x, w, b, grad)
    assert out.dtype == torch.float32 and gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    scale_out = x.double().abs() @ w.double().abs().T + b.double().abs()
    assert ((out.double() - ref).abs() <= 2 ** -16 * scale_out + 1e-30).all()
    scale_gw = grad.double().abs().T @ x.double().abs()
    assert ((gw.double() - ref_gw).abs() <= 2 ** -15 * scale_gw + 1e-30).all()
    scale_gx = grad.double().abs() @ w.double().abs()  # bf16 output: one rounding (2**-9) on top
    assert ((gx.double() - ref_gx).abs() <= 2 ** -8 * scale_gx + 1e-30).all()


def test_bounds_catch_a_plain_bf16_router():
    x, w, b, grad = _inputs(3)
    ref = _reference(x, w, b, grad)[0]
    plain = (x.float() @ w.to(torch.bfloat16).float().T + b).double()  # the weight rounded to bf16
    scale = x.double().abs() @ w.double().abs().T + b.double().abs()
    assert ((plain - ref).abs() > 2 ** -16 * scale).any()


def test_automatic_choice_and_plain_path():
    x, w, b, grad = _inputs(4)
    out, gx, gw = _run(x, w, b, grad)  # CPU: the plain float32 path, exactly F.linear on x.float()
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = torch.nn.functional.linear(xg.float(), wg, b)
    ref.backward(grad)
    assert torch.equal(out, ref) and torch.equal(gx, xg.grad) and torch.equal(gw, wg.grad)
    out32 = router_logits(x.float(), w)  # float32 input: plain path on any device
    assert out32.dtype == torch.float32 and torch.equal(out32, x.float() @ w.T)


def test_gradients_only_where_asked():
    x, w, b, grad = _inputs(5)
    wg = w.clone().requires_grad_()
    router_logits(x, wg, split_bf16=True).backward(grad)  # x needs no gradient
    _, _, ref_gw = _reference(x, w, b, grad)
    assert ((wg.grad.double() - ref_gw).abs() <= 2 ** -15 * (grad.double().abs().T @ x.double().abs())).all()
    with torch.no_grad():
        assert router_logits(x, w, b, split_bf16=True).shape == (64, 8)


def test_compiled_equals_eager():
    """torch.compile does not emulate precision casts: a split written as t - t.to(bf16).float() fuses
    into lo = 0 there (the logits then carry the bf16 weight's error, 6e-2 here). The split on the bit
    pattern survives it."""
    x, w, b, grad = _inputs(7, T=32, H=64)
    eager = _run(x, w, b, grad, split_bf16=True)
    compiled = torch.compile(lambda a, m: router_logits(a, m, b, split_bf16=True))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = compiled(xg, wg)
    out.backward(grad)
    assert torch.equal(out, eager[0]) and torch.equal(xg.grad, eager[1]) and torch.equal(wg.grad, eager[2])


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,E", [(512, 256, 16), (37, 100, 6)])  # aligned, and no dimension a multiple of 8
def test_cuda_bf16_takes_the_split_path_and_compiles(T, H, E):
    x, w, b, grad = _inputs(6, T=T, H=H, E=E, device="cuda")
    out, gx, gw = _run(x, w, b, grad)
    forced = _run(x, w, b, grad, split_bf16=True)
    assert torch.equal(out, forced[0]) and torch.equal(gw, forced[2])
    compiled = torch.compile(lambda a, m: router_logits(a, m, b))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = compiled(xg, wg)
    got.backward(grad)
    ref, _, ref_gw = _reference(x, w, b, grad)
    scale = x.double().abs() @ w.double().abs().T + b.double().abs()
    assert ((got.double() - ref).abs() <= 2 ** -16 * scale + 1e-30).all()
    assert ((wg.grad.double() - ref_gw).abs() <= 2 ** -15 * (grad.double().abs().T @ x.double().abs())).all()
