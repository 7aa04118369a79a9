"""Pack (dispatch) and combine: move hidden states by a Plan. The PyTorch reference.

Shape legend: T tokens, H hidden, K slots per token, R packed rows (see `plan`).
pack:    x_RH[r] = x_TH[token_index_R[r]]  (zero rows where token_index_R is T)
combine: out_TH[t] = sum_k gate_TK[t, k] * y_RH[row_TK[t, k]]  over kept slots, in float32,
         rounded once to y's dtype. A gather then a sum in a fixed order: no atomics, so the same
         inputs give bit-identical outputs.
The backwards are written out so they keep that property: the gradient of pack is each token's
sum of its kept rows' gradients (a gather, float32), the gradient of combine with respect to y is
one write per kept row (gate * grad_out[t]). Autograd's own backwards of the gathers would
scatter-add with atomics (bf16, run-to-run different; every dropped slot adding into row 0).
"""
from __future__ import annotations

import torch

from .plan import Plan
from .validation import check_rows


def _gather_rows(x_TH: torch.Tensor, token_index_R: torch.Tensor, every_row_filled: bool) -> torch.Tensor:
    if every_row_filled:
        return x_TH.index_select(0, token_index_R)
    x_with_zero_row = torch.cat([x_TH, x_TH.new_zeros(1, x_TH.shape[1])])
    return x_with_zero_row.index_select(0, token_index_R)


def _kept_rows_TKH(y_RH: torch.Tensor, row_TK: torch.Tensor, kept_TK: torch.Tensor) -> torch.Tensor:
    """float32 [T, K, H]: y_RH[row_TK[t, k]] where kept, else 0."""
    T, K = row_TK.shape
    y_TKH = y_RH.index_select(0, row_TK.clamp(min=0).reshape(-1)).view(T, K, y_RH.shape[1]).float()
    return torch.where(kept_TK.unsqueeze(-1), y_TKH, 0.0)


def _scatter_kept_rows(v_TKH: torch.Tensor, row_TK: torch.Tensor, kept_TK: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[R, H]: row row_TK[t, k] = v_TKH[t, k] for kept slots (rows are distinct), other rows 0."""
    T, K, H = v_TKH.shape
    rows = torch.where(kept_TK, row_TK, num_rows).reshape(-1)  # dropped slots land on a spare row
    out = v_TKH.new_zeros(num_rows + 1, H).index_copy_(0, rows, v_TKH.reshape(T * K, H))
    return out[:num_rows]


class _Pack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TH, token_index_R, row_TK, kept_TK, every_row_filled):
        ctx.save_for_backward(row_TK, kept_TK)
        return _gather_rows(x_TH, token_index_R, every_row_filled)

    @staticmethod
    def backward(ctx, grad_RH):
        row_TK, kept_TK = ctx.saved_tensors
        grad_TH = _kept_rows_TKH(grad_RH, row_TK, kept_TK).sum(1).to(grad_RH.dtype)
        return grad_TH, None, None, None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_RH, gate_TK, row_TK, kept_TK):
        ctx.save_for_backward(y_RH, gate_TK, row_TK, kept_TK)
        return (_kept_rows_TKH(y_RH, row_TK, kept_TK) * gate_TK.unsqueeze(-1)).sum(1).to(y_RH.dtype)

    @staticmethod
    def backward(ctx, grad_TH):
        y_RH, gate_TK, row_TK, kept_TK = ctx.saved_tensors
        g_T1H = grad_TH.float().unsqueeze(1)
        grad_y = grad_gate = None
        if ctx.needs_input_grad[0]:
            v_TKH = (g_T1H * gate_TK.unsqueeze(-1)).to(y_RH.dtype)
            grad_y = _scatter_kept_rows(v_TKH, row_TK, kept_TK, y_RH.shape[0])
        if ctx.needs_input_grad[1]:
            grad_gate = (g_T1H * _kept_rows_TKH(y_RH, row_TK, kept_TK)).sum(-1).to(gate_TK.dtype)
        return grad_y, grad_gate, None, None


def check_pack_input(x_TH: torch.Tensor, plan: Plan) -> None:
    """x_TH is a floating [T, H] matrix on the plan's device (every backend; no host sync)."""
    check_rows("pack input x_TH", x_TH, plan.num_tokens, plan.row_TK.device)


def check_combine_input(y_RH: torch.Tensor, plan: Plan) -> None:
    """y_RH is a floating [R, H] matrix on the plan's device (every backend; no host sync)."""
    check_rows("combine input y_RH", y_RH, plan.num_rows, plan.row_TK.device)


def pack(x_TH: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Gather token rows into the packed expert-major buffer [R, H]."""
    check_pack_input(x_TH, plan)
    return _Pack.apply(x_TH, plan.token_index_R, plan.row_TK, plan.kept_TK, plan.every_row_filled)


def combine(y_RH: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Weighted sum of each token's kept expert rows: [R, H] -> [T, H] in y's dtype."""
    check_combine_input(y_RH, plan)
    return _Combine.apply(y_RH, plan.gate_TK, plan.row_TK, plan.kept_TK)
