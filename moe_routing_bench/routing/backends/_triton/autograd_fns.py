"""torch.autograd.Function wrappers so an MoE layer trains through the Triton kernels.

| function    | forward                        | backward                                                   |
|-------------|--------------------------------|------------------------------------------------------------|
| `RouteFn`   | fused router kernel            | torch recompute of the reference weights/probs for the     |
|             |                                | chosen ids, then autograd.grad (exactly the reference's)   |
| `PackFn`    | `pack_rows`                    | grad_x = combine_rows(grad, row_TK, gate=None): each token |
|             |                                | sums its K rows (a gather with row_TK, deterministic)      |
| `CombineFn` | `combine_rows`                 | one kernel: grad_y[row] = gate * grad_out[t] (push form,   |
|             |                                | empty rows zero), grad_gate[t,k] = dot(grad_out[t], y[row])|
| `GeluFn`    | `gelu` (elementwise)           | `gelu_backward`: grad * gelu'(x)                           |
| `ExpertsFn` | gather-fused GEMM1 + GELU, GEMM2, | grad_gate = dot(grad_out[t], y[row]); dA = gelu'(a) *      |
|             | combine (`experts_forward`)    | (gate * grad_out[tok]) W2^T (gather + gate in the GEMM);   |
|             |                                | dW2 = h^T (gate * grad_out[tok]); dX = dA W1^T summed per   |
|             |                                | token by combine; dW1 = x[tok]^T dA (gathers in the loads) |
Gate weights reach the router through `plan_tensors`' torch gate arithmetic (see `kernels.plan`).
"""
from __future__ import annotations

import torch

from .combine_kernels import combine_backward, combine_rows
from .gelu_kernels import gelu, gelu_backward
from .grouped_gemm_kernels import ACT_GELU, ACT_GELU_BWD, grouped_gemm, grouped_wgrad
from .launch import empty
from .pack_kernels import pack_rows
from .topk_kernels import MODES, route_topk


def reference_weights(logits_f32: torch.Tensor, ids_TK: torch.Tensor, mode: int, top_k: int, temperature: float,
                      bias_E: torch.Tensor | None):
    """(weights, probs) by the reference formulas of `routers.route` for given ids (differentiable)."""
    x = logits_f32
    if mode == MODES["aux-free"]:
        scores = torch.sigmoid(x)
        chosen = scores.gather(-1, ids_TK)
        return chosen / chosen.sum(-1, keepdim=True), scores / scores.sum(-1, keepdim=True)
    probs = torch.softmax(x, dim=-1)
    if mode == MODES["top1"]:
        w = probs.gather(-1, ids_TK)
    elif mode == MODES["topk-hard"]:
        w = torch.full(ids_TK.shape, 1.0 / top_k, device=x.device)
    elif mode == MODES["softk"]:
        w = torch.softmax(x.gather(-1, ids_TK) / temperature, dim=-1)
    else:
        w = torch.softmax(x / temperature, dim=-1).gather(-1, ids_TK)
    return w, probs


class RouteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, mode, top_k, temperature, bias_E):
        """(ids, weights, probs, router-block histogram, its tokens per block)."""
        ids, w, probs, (hist, block_t) = route_topk(logits.detach(), mode, top_k, temperature=temperature,
                                                    bias_E=bias_E, write_hist=True)
        ctx.save_for_backward(logits, ids)
        ctx.cfg = (mode, top_k, temperature, bias_E)
        ctx.mark_non_differentiable(ids, hist)
        if mode == MODES["topk-hard"]:
            ctx.mark_non_differentiable(w)
        return ids, w, probs, hist, block_t

    @staticmethod
    def backward(ctx, g_ids, g_w, g_probs, g_hist=None, g_block_t=None):
        logits, ids = ctx.saved_tensors
        mode, top_k, temperature, bias_E = ctx.cfg
        with torch.enable_grad():
            x = logits.detach().float().requires_grad_()
            w, probs = reference_weights(x, ids, mode, top_k, temperature, bias_E)
            outs, grads = [], []
            if g_w is not None and w.requires_grad:
                outs.append(w)
                grads.append(g_w)
            if g_probs is not None:
                outs.append(probs)
                grads.append(g_probs)
            gx = torch.autograd.grad(outs, x, grads) [0] if outs else torch.zeros_like(x)
        return gx.to(logits.dtype), None, None, None, None


class PackFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TH, row_TK, token_index_R, every_row_filled):
        ctx.save_for_backward(row_TK)
        return pack_rows(x_TH, row_TK, token_index_R, every_row_filled)

    @staticmethod
    def backward(ctx, grad_RH):
        (row_TK,) = ctx.saved_tensors
        return combine_rows(grad_RH, row_TK, None), None, None, None


class CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_RH, gate_TK, row_TK, token_index_R, every_row_filled):
        ctx.save_for_backward(y_RH, gate_TK, row_TK, token_index_R)
        ctx.every_row_filled = every_row_filled
        return combine_rows(y_RH, row_TK, gate_TK)

    @staticmethod
    def backward(ctx, grad_TH):
        y_RH, gate_TK, row_TK, token_index_R = ctx.saved_tensors
        need_y, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gy, gg = combine_backward(grad_TH, y_RH, row_TK, gate_TK, token_index_R, ctx.every_row_filled, need_y, need_g)
        return gy, gg, None, None, None


def experts_forward(x_TH, w1_EHF, w2_EFH, gate_TK, row_TK, token_index_R, kept_counts_E, offsets_E1, save: bool):
    """out_TH = combine(gelu(x[tok] W1_e) W2_e) with no packed copy of x: (out, pre-activation or None, h, y)."""
    rows = (token_index_R, kept_counts_E, offsets_E1)
    R, F = token_index_R.shape[0], w1_EHF.shape[2]
    pre = empty(R, F, dtype=x_TH.dtype, device=x_TH.device) if save else None
    h = grouped_gemm(x_TH, w1_EHF, rows, num_rows=R, gather=True, act=ACT_GELU, pre_RN=pre, save_pre=save)
    y = grouped_gemm(h, w2_EFH, rows, num_rows=R, gather=False)
    return combine_rows(y, row_TK, gate_TK), pre, h, y


def gate_per_row(gate_TK: torch.Tensor, row_TK: torch.Tensor, num_rows: int) -> torch.Tensor:
    """float32 [R]: the gate of the slot that owns each row (rows are distinct; dropped slots go to a spare row)."""
    g = torch.zeros(num_rows + 1, dtype=torch.float32, device=gate_TK.device)
    g.scatter_(0, torch.where(row_TK >= 0, row_TK, num_rows).reshape(-1), gate_TK.detach().float().reshape(-1))
    return g[:num_rows]


class GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return gelu_backward(grad.contiguous(), x)


class ExpertsFn(torch.autograd.Function):
    """pack -> GELU expert MLPs -> combine as one differentiable op over the fused kernels."""

    @staticmethod
    def forward(ctx, x_TH, w1_EHF, w2_EFH, gate_TK, row_TK, token_index_R, kept_counts_E, offsets_E1):
        out, pre, h, y = experts_forward(x_TH, w1_EHF, w2_EFH, gate_TK, row_TK, token_index_R, kept_counts_E,
                                         offsets_E1, save=True)
        ctx.save_for_backward(x_TH, w1_EHF, w2_EFH, gate_TK, row_TK, token_index_R, kept_counts_E, offsets_E1,
                              pre, h, y)
        return out

    @staticmethod
    def backward(ctx, grad_TH):
        x, w1, w2, gate, row, tok, kc, off, pre, h, y = ctx.saved_tensors
        need_x, need_w1, need_w2, need_g = ctx.needs_input_grad[:4]
        go = grad_TH.contiguous()
        rows = (tok, kc, off)
        R = tok.shape[0]
        gx = gw1 = gw2 = gg = None
        if need_g:
            _, gg = combine_backward(go, y, row, gate, tok, True, False, True)
        gate_R = gate_per_row(gate, row, R)
        if need_w2:
            gw2 = grouped_wgrad(h, go, rows, gather_p=False, gather_q=True, scale_R=gate_R, out_dtype=w2.dtype)
        if need_x or need_w1:
            dA = grouped_gemm(go, w2.transpose(1, 2), rows, num_rows=R, gather=True, scale_R=gate_R,
                              act=ACT_GELU_BWD, pre_RN=pre, out_dtype=x.dtype)
            if need_w1:
                gw1 = grouped_wgrad(x, dA, rows, gather_p=True, gather_q=False, scale_R=None, out_dtype=w1.dtype)
            if need_x:
                dX = grouped_gemm(dA, w1.transpose(1, 2), rows, num_rows=R, gather=False)
                gx = combine_rows(dX, row, None)
        return gx, gw1, gw2, gg, None, None, None, None
