"""Combine kernels: weighted sum of each token's kept rows, and its backward.

Forward (`_combine_kernel`): one program takes BLOCK_T tokens; per BLOCK_H chunk it gathers the
token's K rows (dropped slots, row -1, are never read), multiplies by the gate in float32, sums in
float32 in slot order k = 0..K-1 and writes the token's row once. No atomics: bit-identical run to
run. With GATED=False it is the backward of pack (grad_x[t] = sum over kept k of grad_packed[row]).

Backward (`_combine_bwd_kernel`): per token, reads grad_out[t] once and
  - writes grad_y[row_TK[t, k]] = gate[t, k] * grad_out[t] for kept slots (a pack in the push form),
    extra programs zeroing the rows no kept slot owns;
  - computes grad_gate[t, k] = dot(grad_out[t], y[row_TK[t, k]]) in float32 (0 when dropped).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launcher, cdiv, empty, next_pow2
from .pack_kernels import default_config, prune_row_configs, row_configs, zero_empty_rows


# Its token-block prologue and slot loop repeat pack_kernels._pack_kernel's on purpose: a shared
# @triton.jit helper changes the generated code, which needs a GPU to re-verify performance.
@triton.jit
def _combine_kernel(y_ptr, row_ptr, gate_ptr, out_ptr,
                    T, R, H, stride_y, stride_o,
                    K: tl.constexpr, GATED: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tm = t < T
    t64 = t.to(tl.int64)
    hh = tl.arange(0, BLOCK_H)
    for hc in range(0, tl.cdiv(H, BLOCK_H)):
        cols = hc * BLOCK_H + hh  # chunk index times a constexpr: 16-byte aligned
        cm = cols < H
        acc = tl.zeros([BLOCK_T, BLOCK_H], tl.float32)
        for k in tl.static_range(K):
            r = tl.load(row_ptr + t64 * K + k, mask=tm, other=-1)
            keep = (r >= 0) & (r < R)  # (r < R always; guards memory)
            rs = tl.where(keep, r, 0)
            yv = tl.load(y_ptr + rs[:, None] * stride_y + cols[None, :], mask=keep[:, None] & cm[None, :],
                         other=0.0).to(tl.float32)  # (evict_first hints measured ~2% slower on H100)
            if GATED:
                g = tl.load(gate_ptr + t64 * K + k, mask=keep, other=0.0)
                acc += yv * g[:, None]
            else:
                acc += yv
        tl.store(out_ptr + t64[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=tm[:, None] & cm[None, :])


# Its token-block prologue and slot loop repeat pack_kernels._pack_kernel's on purpose: a shared
# @triton.jit helper changes the generated code, which needs a GPU to re-verify performance.
@triton.jit
def _combine_bwd_kernel(go_ptr, y_ptr, row_ptr, gate_ptr, tok_ptr, gy_ptr, gg_ptr,
                        T, R, H, stride_go, stride_y, stride_gy,
                        K: tl.constexpr, K_PAD: tl.constexpr, NEED_GY: tl.constexpr, NEED_GG: tl.constexpr,
                        ZERO_FILL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    n_tok = tl.cdiv(T, BLOCK_T)
    hh = tl.arange(0, BLOCK_H)
    if pid < n_tok:
        t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        tm = t < T
        t64 = t.to(tl.int64)
        kk = tl.arange(0, K_PAD)
        dots = tl.zeros([BLOCK_T, K_PAD], tl.float32)
        for hc in range(0, tl.cdiv(H, BLOCK_H)):
            cols = hc * BLOCK_H + hh  # chunk index times a constexpr: 16-byte aligned
            cm = cols < H
            go = tl.load(go_ptr + t64[:, None] * stride_go + cols[None, :], mask=tm[:, None] & cm[None, :],
                         other=0.0).to(tl.float32)
            for k in tl.static_range(K):
                r = tl.load(row_ptr + t64 * K + k, mask=tm, other=-1)
                keep = (r >= 0) & (r < R)  # (r < R always; guards memory)
                rs = tl.where(keep, r, 0)
                m2 = keep[:, None] & cm[None, :]
                if NEED_GY:
                    g = tl.load(gate_ptr + t64 * K + k, mask=keep, other=0.0)
                    tl.store(gy_ptr + rs[:, None] * stride_gy + cols[None, :],
                             (go * g[:, None]).to(gy_ptr.dtype.element_ty), mask=m2)
                if NEED_GG:
                    yv = tl.load(y_ptr + rs[:, None] * stride_y + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                    d = tl.sum(go * yv, axis=1)
                    dots += tl.where(kk[None, :] == k, d[:, None], 0.0)
        if NEED_GG:
            tl.store(gg_ptr + t64[:, None] * K + kk[None, :], dots, mask=tm[:, None] & (kk < K)[None, :])
    else:
        if ZERO_FILL:
            zero_empty_rows(pid - n_tok, tok_ptr, gy_ptr, T, R, H, stride_gy, BLOCK_T, BLOCK_H)


_FWD = Launcher(_combine_kernel, lambda args, meta: default_config(args[6]), row_configs(),
                key=("H", "K", "GATED"), bucket=("T",), prune=prune_row_configs, name="combine")
_BWD = Launcher(_combine_bwd_kernel, lambda args, meta: default_config(args[9]), row_configs(),
                key=("H", "K", "NEED_GY", "NEED_GG", "ZERO_FILL"), bucket=("T",), prune=prune_row_configs,
                name="combine_bwd")


def combine_rows(y_RH: torch.Tensor, row_TK: torch.Tensor, gate_TK: torch.Tensor | None,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """out[t] = sum over kept k of gate[t, k] * y[row_TK[t, k]] (gate 1 when None), float32 sums."""
    y = y_RH if y_RH.stride(-1) == 1 else y_RH.contiguous()
    T, K = row_TK.shape
    H = y.shape[1]
    out = empty(T, H, dtype=out_dtype or y.dtype, device=y.device)
    if T == 0 or H == 0:
        return out
    gated = gate_TK is not None
    gate = gate_TK.contiguous() if gated else row_TK
    _FWD(lambda c: (cdiv(T, c["BLOCK_T"]),), (y, row_TK.contiguous(), gate, out, T, y.shape[0], H, y.stride(0), out.stride(0)),
         dict(K=K, GATED=gated))
    return out


def combine_backward(grad_out_TH: torch.Tensor, y_RH: torch.Tensor, row_TK: torch.Tensor, gate_TK: torch.Tensor,
                     token_index_R: torch.Tensor, every_row_filled: bool, need_grad_y: bool, need_grad_gate: bool):
    """(grad_y [R, H] in y's dtype or None, grad_gate [T, K] float32 or None)."""
    go = grad_out_TH.contiguous()
    y = y_RH if y_RH.stride(-1) == 1 else y_RH.contiguous()
    T, K = row_TK.shape
    R, H = y.shape
    gy = empty(R, H, dtype=y.dtype, device=y.device) if need_grad_y else y
    gg = empty(T, K, dtype=torch.float32, device=y.device) if need_grad_gate else gate_TK
    zero_fill = need_grad_y and not every_row_filled

    def grid(c):
        bt = c["BLOCK_T"]
        return (cdiv(T, bt) + (cdiv(R, bt) if zero_fill else 0),)

    if T > 0 and H > 0:
        _BWD(grid, (go, y, row_TK.contiguous(), gate_TK.contiguous(), token_index_R, gy, gg, T, R, H, go.stride(0),
                    y.stride(0), gy.stride(0)),
             dict(K=K, K_PAD=next_pow2(K), NEED_GY=need_grad_y, NEED_GG=need_grad_gate, ZERO_FILL=zero_fill))
    else:  # nothing to move: every gradient is zero
        if need_grad_y:
            gy.zero_()
        if need_grad_gate:
            gg.zero_()
    return (gy if need_grad_y else None), (gg if need_grad_gate else None)
