"""The expert MLPs' GELU (exact, erf form) and its backward, elementwise over N values.

`gelu` writes gelu(x) and `gelu_backward` grad * gelu'(x), each in the input's dtype, computed in
float32 (as torch's F.gelu): the same arithmetic as the grouped GEMM's GELU epilogues
(`grouped_gemm_kernels._gelu`, `_gelu_grad`, whose normal CDF is a fitted erfc, not libdevice erf).
Both only move bytes, so they are measured against the copy ceiling: on an H200 torch's GELU kernels
ran at 63-71% of it in the MoE layer (392 us and 515 us of an 11.3 ms forward + backward at T16384
F8192 k2), and these kernels with libdevice erf at about the same: compute-bound.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grouped_gemm_kernels import _gelu, _gelu_grad
from .launch import INTERPRET, Launcher, cdiv, empty


@triton.jit
def _gelu_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _gelu(x).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gelu_bwd_kernel(g_ptr, x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (g * _gelu_grad(x)).to(out_ptr.dtype.element_ty), mask=m)


def _default(args, meta) -> dict:
    return dict(BLOCK=1024, num_warps=4) if INTERPRET else dict(BLOCK=4096, num_warps=8)


def _configs() -> list:
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in
            [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16)]]


_FWD = Launcher(_gelu_kernel, _default, _configs(), bucket=("N",), name="gelu")
_BWD = Launcher(_gelu_bwd_kernel, _default, _configs(), bucket=("N",), name="gelu_bwd")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """gelu(x) of a contiguous tensor, in its dtype."""
    out = empty(*x.shape, dtype=x.dtype, device=x.device)
    N = x.numel()
    if N:
        _FWD(lambda c: (cdiv(N, c["BLOCK"]),), (x, out, N), {})
    return out


def gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * gelu'(x) of contiguous tensors of one shape, in x's dtype."""
    out = empty(*x.shape, dtype=x.dtype, device=x.device)
    N = x.numel()
    if N:
        _BWD(lambda c: (cdiv(N, c["BLOCK"]),), (grad, x, out, N), {})
    return out
