"""Pack kernel: token rows -> expert-major packed rows, in the push form.

One program takes BLOCK_T tokens; for each BLOCK_H-wide chunk of the hidden dimension it reads
each token's row once and writes it to the token's K kept rows (`row_TK`, -1 = dropped, nothing
written). HBM traffic is then the strict (1 + K) * H * bytes per token, where a gather
(`out[r] = x[token_index_R[r]]`) reads each token K times. Rows no assignment fills (padded layout,
drops, `valid_TK`) are zeroed by extra programs that read `token_index_R` (T marks an empty row), so
every output row is written exactly once: no races, no atomics.

`SCALE=True` multiplies each written row by the slot's gate in float32 (the backward of combine
with respect to y is this kernel on grad_out). Pure copies move the bits, so bf16 is exact even in
the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import INTERPRET, Launcher, cdiv, empty, next_pow2


@triton.jit
def zero_empty_rows(prog, tok_ptr, out_ptr, T, R, H, stride_o,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """Zero rows [prog*BLOCK_T, (prog+1)*BLOCK_T) of out whose token_index_R is T (no kept slot owns them)."""
    r = prog * BLOCK_T + tl.arange(0, BLOCK_T)
    rm = r < R
    src = tl.load(tok_ptr + r, mask=rm, other=0)
    is_empty = rm & (src == T)
    r64 = r.to(tl.int64)
    hh = tl.arange(0, BLOCK_H)
    zero = tl.zeros([BLOCK_T, BLOCK_H], out_ptr.dtype.element_ty)
    for hc in range(0, tl.cdiv(H, BLOCK_H)):
        cols = hc * BLOCK_H + hh  # chunk index times a constexpr: 16-byte aligned
        tl.store(out_ptr + r64[:, None] * stride_o + cols[None, :], zero,
                 mask=is_empty[:, None] & (cols < H)[None, :])


# combine_kernels' two kernels repeat this prologue and slot loop on purpose: a shared @triton.jit
# helper changes the generated code, which needs a GPU to re-verify performance.
@triton.jit
def _pack_kernel(x_ptr, row_ptr, gate_ptr, tok_ptr, out_ptr,
                 T, R, H, stride_x, stride_o,
                 K: tl.constexpr, SCALE: tl.constexpr, ZERO_FILL: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    n_tok = tl.cdiv(T, BLOCK_T)
    hh = tl.arange(0, BLOCK_H)
    if pid < n_tok:
        t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        tm = t < T
        t64 = t.to(tl.int64)
        for hc in range(0, tl.cdiv(H, BLOCK_H)):
            cols = hc * BLOCK_H + hh  # chunk index times a constexpr: 16-byte aligned
            cm = cols < H
            xv = tl.load(x_ptr + t64[:, None] * stride_x + cols[None, :], mask=tm[:, None] & cm[None, :])
            for k in tl.static_range(K):
                r = tl.load(row_ptr + t64 * K + k, mask=tm, other=-1)
                keep = (r >= 0) & (r < R)  # (r < R always; guards memory)
                rs = tl.where(keep, r, 0)
                if SCALE:
                    g = tl.load(gate_ptr + t64 * K + k, mask=keep, other=0.0)
                    val = (xv.to(tl.float32) * g[:, None]).to(out_ptr.dtype.element_ty)
                else:
                    val = xv
                tl.store(out_ptr + rs[:, None] * stride_o + cols[None, :], val, mask=keep[:, None] & cm[None, :])
    else:
        if ZERO_FILL:
            zero_empty_rows(pid - n_tok, tok_ptr, out_ptr, T, R, H, stride_o, BLOCK_T, BLOCK_H)


def default_config(H: int) -> dict:
    """Fixed launch config (the interpreter's, and the GPU's when autotuning is off)."""
    if INTERPRET:
        return dict(BLOCK_T=64, BLOCK_H=min(next_pow2(H), 256), num_warps=4)
    return dict(BLOCK_T=1, BLOCK_H=min(next_pow2(H), 2048), num_warps=4)


def row_configs() -> list:
    """Configs tried by the autotuner for the row-moving kernels (pack, combine and their backwards)."""
    out = []
    for block_t, block_h, warps in [
        (1, 1024, 4), (1, 2048, 4), (1, 4096, 4), (1, 4096, 8), (1, 8192, 8), (1, 4096, 16),
        (2, 2048, 4), (2, 4096, 8), (2, 4096, 16), (4, 1024, 4), (4, 2048, 8), (8, 1024, 4), (8, 1024, 8),
        (16, 1024, 8), (1, 8192, 16), (2, 8192, 16), (4, 4096, 16), (16, 1024, 4), (16, 512, 4), (32, 512, 4),
    ]:
        out.append(triton.Config({"BLOCK_T": block_t, "BLOCK_H": block_h}, num_warps=warps))
    return out


def prune_row_configs(configs, named_args, **kwargs):
    """Drop configs whose chunk is more than twice the (padded) hidden size or under an eighth of it."""
    H = named_args["H"]
    keep = [c for c in configs if next_pow2(H) // 8 <= c.kwargs["BLOCK_H"] <= max(512, 2 * next_pow2(H))
            and c.kwargs["BLOCK_T"] * c.kwargs["BLOCK_H"] <= 16384]
    return keep or configs[:1]


_LAUNCH = Launcher(_pack_kernel, lambda args, meta: default_config(args[7]), row_configs(),
                   key=("H", "K", "SCALE", "ZERO_FILL"), bucket=("T",), prune=prune_row_configs, name="pack")


def pack_rows(x_TH: torch.Tensor, row_TK: torch.Tensor, token_index_R: torch.Tensor, every_row_filled: bool,
              gate_TK: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """out[row_TK[t, k]] = x[t] (times gate_TK[t, k] when given); rows with token_index_R == T are zero."""
    x = x_TH if x_TH.stride(-1) == 1 else x_TH.contiguous()
    T, H = x.shape
    K = row_TK.shape[1]
    R = token_index_R.shape[0]
    out = empty(R, H, dtype=out_dtype or x.dtype, device=x.device)
    if R == 0 or H == 0:
        return out
    scale = gate_TK is not None
    gate = gate_TK.contiguous() if scale else row_TK
    zero_fill = not every_row_filled

    def grid(c):
        bt = c["BLOCK_T"]
        return (cdiv(T, bt) + (cdiv(R, bt) if zero_fill else 0),)

    _LAUNCH(grid, (x, row_TK.contiguous(), gate, token_index_R, out, T, R, H, x.stride(0), out.stride(0)),
            dict(K=K, SCALE=scale, ZERO_FILL=zero_fill))
    return out
