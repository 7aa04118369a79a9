"""Pack (dispatch) and combine: move hidden states by a Plan. The PyTorch reference.

Shape legend: T tokens, H hidden, K slots per token, R packed rows (see `plan`).
pack:    x_RH[r] = x_TH[token_index_R[r]]  (zero rows where token_index_R is T)
combine: out_TH[t] = sum_k gate_TK[t, k] * y_RH[row_TK[t, k]]  over kept slots, in float32,
         rounded once to y's dtype. A gather then a sum in a fixed order: no atomics, so the same
         inputs give bit-identical outputs.
"""
from __future__ import annotations

import torch

from .plan import Plan


def pack(x_TH: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Gather token rows into the packed expert-major buffer [R, H]."""
    if plan.every_row_filled:
        return x_TH.index_select(0, plan.token_index_R)
    x_with_zero_row = torch.cat([x_TH, x_TH.new_zeros(1, x_TH.shape[1])])
    return x_with_zero_row.index_select(0, plan.token_index_R)


def combine(y_RH: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Weighted sum of each token's kept expert rows: [R, H] -> [T, H] in y's dtype."""
    T, K = plan.row_TK.shape
    rows = plan.row_TK.clamp(min=0).reshape(-1)
    y_TKH = y_RH.index_select(0, rows).view(T, K, -1).float()
    y_TKH = torch.where(plan.kept_TK.unsqueeze(-1), y_TKH, 0.0)
    return (y_TKH * plan.gate_TK.unsqueeze(-1)).sum(1).to(y_RH.dtype)
