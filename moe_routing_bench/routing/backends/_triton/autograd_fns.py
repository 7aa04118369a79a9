"""torch.autograd.Function wrappers so an MoE layer trains through the Triton kernels.

| function    | forward                        | backward                                                   |
|-------------|--------------------------------|------------------------------------------------------------|
| `RouteFn`   | fused router kernel            | torch recompute of the reference weights/probs for the     |
|             |                                | chosen ids, then autograd.grad (exactly the reference's)   |
| `PackFn`    | `pack_rows`                    | grad_x = combine_rows(grad, row_TK, gate=None): each token |
|             |                                | sums its K rows (a gather with row_TK, deterministic)      |
| `CombineFn` | `combine_rows`                 | one kernel: grad_y[row] = gate * grad_out[t] (push form,   |
|             |                                | empty rows zero), grad_gate[t,k] = dot(grad_out[t], y[row])|
Gate weights reach the router through `plan_tensors`' torch gate arithmetic (see `kernels.plan`).
"""
from __future__ import annotations

import torch

from .combine_kernels import combine_backward, combine_rows
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
        ids, w, probs = route_topk(logits.detach(), mode, top_k, temperature=temperature, bias_E=bias_E)
        ctx.save_for_backward(logits, ids)
        ctx.cfg = (mode, top_k, temperature, bias_E)
        ctx.mark_non_differentiable(ids)
        if mode == MODES["topk-hard"]:
            ctx.mark_non_differentiable(w)
        return ids, w, probs

    @staticmethod
    def backward(ctx, g_ids, g_w, g_probs):
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
