"""The router's logits ``x_TH @ W_EH^T + b_E`` in float32, on bf16 tensor cores where the input is bf16.

Shape legend: T tokens, H hidden, E experts.

The router is float32 (Switch's selective precision). Computed as ``F.linear(x.float(), W)``, a
bf16 activation is first copied to float32 (T x H x 4 bytes) and the products run on the GPU's
float32 SIMT units: at T=8192 H=7168 E=256 the three router GEMMs (forward, both gradients) took
2.2 ms of a 40 ms layer on an H200. For a bf16 ``x_TH`` on CUDA, ``router_logits`` instead splits the
float32 weight into two bf16 terms, ``W = W_hi + W_lo + r`` with ``|r| <= 2**-17 |W|``, and multiplies
the exact bf16 activations by both in one bf16 GEMM that accumulates and writes float32
(``torch.mm(..., out_dtype=torch.float32)``); the backward splits the float32 logit gradient the same
way. Every product is then exact but for ``r`` (or its gradient counterpart), the sums are float32:
logits and weight gradient are within 2**-16 of sum |x||W| (resp. |g||x|) of the exact values, as
float32 arithmetic is, and the input gradient is rounded to bf16 as before. Other inputs (float32, fp16, CPU) take the
plain float32 path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["router_logits"]


def _mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b for bf16 a, b, accumulated in float32 and written as ``out_dtype``."""
    if a.is_cuda:
        return torch.mm(a, b) if out_dtype == a.dtype else torch.mm(a, b, out_dtype=out_dtype)
    return torch.mm(a.float(), b.float()).to(out_dtype)  # the same exact products and float32 sums


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 t -> bf16 (hi, lo) with hi + lo = t to 2**-17 relative.

    hi is t rounded to bf16's 8 significant bits on the bit pattern (round half away from zero), so
    it is exact in bf16 and t - hi is exact in float32: written as ``t - t.to(bf16).float()``,
    torch.compile's fused kernel would skip the rounding (it does not emulate precision casts) and
    lo would come out 0."""
    bits = t.contiguous().view(torch.int32)
    hi = ((bits + 0x8000) & -0x10000).view(torch.float32)
    return hi.to(torch.bfloat16), (t - hi).to(torch.bfloat16)


class _SplitBF16Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TH: torch.Tensor, weight_EH: torch.Tensor) -> torch.Tensor:
        w_hi, w_lo = _split(weight_EH.detach().float())
        ctx.save_for_backward(x_TH, w_hi, w_lo)
        E = weight_EH.shape[0]
        both_T2E = _mm(x_TH, torch.cat([w_hi, w_lo]).t(), torch.float32)
        return both_T2E[:, :E] + both_T2E[:, E:]

    @staticmethod
    def backward(ctx, grad_TE: torch.Tensor):
        x_TH, w_hi, w_lo = ctx.saved_tensors
        g_hi, g_lo = _split(grad_TE.float())
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # g_hi W_hi + g_hi W_lo + g_lo W_hi, one GEMM over 3E
            grad_x = _mm(torch.cat([g_hi, g_hi, g_lo], dim=1), torch.cat([w_hi, w_lo, w_hi]), x_TH.dtype)
        if ctx.needs_input_grad[1]:
            E = grad_TE.shape[1]
            both_2EH = _mm(torch.cat([g_hi, g_lo], dim=1).t(), x_TH, torch.float32)
            grad_w = both_2EH[:E] + both_2EH[E:]
        return grad_x, grad_w


def router_logits(x_TH: torch.Tensor, weight_EH: torch.Tensor, bias_E: torch.Tensor | None = None, *,
                  split_bf16: bool | None = None) -> torch.Tensor:
    """float32 logits [T, E] of ``x_TH`` [T, H] under a float32 router ``weight_EH`` [E, H] (and
    ``bias_E``). ``split_bf16`` None: the bf16 tensor-core path when ``x_TH`` is bf16 on CUDA
    (True forces it, e.g. to test it on CPU, where the same products and sums run in float32)."""
    if split_bf16 is None:
        split_bf16 = x_TH.is_cuda and x_TH.dtype == torch.bfloat16
    if not split_bf16:
        return F.linear(x_TH.float(), weight_EH.float(), None if bias_E is None else bias_E.float())
    logits_TE = _SplitBF16Linear.apply(x_TH.to(torch.bfloat16), weight_EH)
    return logits_TE if bias_E is None else logits_TE + bias_E.float()
