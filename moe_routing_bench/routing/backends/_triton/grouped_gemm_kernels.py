"""Grouped GEMMs over a plan's expert-major rows, with the dispatch gather fused into the operand load.

Shape legend: T tokens, H hidden, F expert hidden, E experts, R packed rows (the plan's), N output
columns, D the reduced dimension. Expert e owns rows [offsets_E1[e], offsets_E1[e] + kept_counts_E[e])
(ragged or padded layout alike); rows outside every segment are neither read nor written.

`_grouped_gemm_kernel`: out[r, :] = epilogue(s_r * A[src(r), :] @ B[e(r)]) for the rows r of each
expert, where src(r) = token_index_R[r] when GATHER (A is x_TH or grad_out_TH: the packed copy
is never written) else r, s_r = scale_R[r] when SCALE (the gate of the row) else 1, and the
epilogue is none, GELU (writing the pre-activation too when SAVE_PRE), or the GELU backward
(times gelu'(pre[r, :])). B is any strided [E, D, N] view: W1 [E, H, F] forward, a transposed
W2 [E, F, H] view for the backward. Tiles of BLOCK_M rows never cross experts; each program finds
its expert from the kept counts (no host sync, no schedule tensor), in GROUP_M-grouped order so
programs running together share B columns and A rows in L2.

`_grouped_wgrad_kernel`: dW[e] = P_e^T @ Q_e over expert e's rows (P, Q each gathered and/or
row-scaled as above): the weight gradients. No atomics: every dW tile is one program's sum over
its expert's rows in row order, so results are bit-identical run to run.

Operands are cast to DOT_DTYPE in the load (bf16 on a GPU for bf16 activations, so float32 master
weights are read and cast in place; float32 under the interpreter, whose bf16 arithmetic is wrong,
and for float32 activations with IEEE products); sums are float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import INTERPRET, Launcher, cdiv, empty, next_pow2

ACT_NONE, ACT_GELU, ACT_GELU_BWD = 0, 1, 2


@triton.jit
def _normal_cdf(x):
    """Phi(x) in float32 without libdevice erf, whose branches made the GELU kernels compute-bound on
    an H200 (about 60% of copy). erfc(z) = t exp(Q(t) - z^2), t = 1 / (1 + z/2), z = |x|/sqrt(2) >= 0,
    with Q a degree-10 least-squares fit of log(erfc(z) / t) + z^2 on [0, 10] (relative error 2.4e-8
    in float64); evaluated in float32 the GELU is within 4e-7 absolute and 2e-5 relative of exact."""
    z = tl.abs(x) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.5 * z)
    q = -0.132203892
    q = q * t + 0.918559075
    q = q * t - 2.6603844
    q = q * t + 4.06585853
    q = q * t - 3.40774851
    q = q * t + 1.58963713
    q = q * t - 0.684851448
    q = q * t + 0.219764388
    q = q * t + 0.355312336
    q = q * t + 1.00162749
    q = q * t - 1.26557068
    half_erfc = 0.5 * t * tl.exp(q - z * z)
    return tl.where(x < 0, half_erfc, 1.0 - half_erfc)


@triton.jit
def _gelu(x):
    return x * _normal_cdf(x)


@triton.jit
def _gelu_grad(x):
    return _normal_cdf(x) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)


@triton.jit
def _dot(a, b, acc, DOT_BF16: tl.constexpr):
    if DOT_BF16:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _expert_tile(m, kc_ptr, off_ptr, E, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr):
    """Tile m of the expert-major row list: (tiles in all, expert, first row, end row of the expert)."""
    ee = tl.arange(0, E_PAD)
    kc = tl.load(kc_ptr + ee, mask=ee < E, other=0)
    tiles = (kc + BLOCK_M - 1) // BLOCK_M
    ends = tl.cumsum(tiles, 0)
    total = tl.sum(tiles, 0)
    e = tl.minimum(tl.sum((ends <= m).to(tl.int32), 0), E - 1)
    here = ee == e
    first_tile = tl.sum(tl.where(here, ends - tiles, 0), 0)
    start = tl.load(off_ptr + e)
    row0 = start + (m - first_tile) * BLOCK_M
    row_end = start + tl.sum(tl.where(here, kc, 0), 0)
    return total, e, row0, row_end


@triton.jit
def _grouped_gemm_kernel(a_ptr, b_ptr, out_ptr, pre_ptr, tok_ptr, scale_ptr, kc_ptr, off_ptr,
                         R, N, D, E, stride_a, stride_be, stride_bd, stride_bn, stride_o,
                         GATHER: tl.constexpr, SCALE: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
                         DOT_BF16: tl.constexpr, E_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(R, BLOCK_M) + E  # an upper bound of the tiles: sum over e of ceil(count_e / BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    m = first_m + (pid % in_group) % group_size
    n = (pid % in_group) // group_size
    total, e, row0, row_end = _expert_tile(m, kc_ptr, off_ptr, E, BLOCK_M, E_PAD)
    if m < total:
        rows = row0 + tl.arange(0, BLOCK_M)
        rmask = rows < row_end
        if GATHER:
            src = tl.load(tok_ptr + rows, mask=rmask, other=0)
        else:
            src = rows
        cols = n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = cols < N
        dd = tl.arange(0, BLOCK_D)
        a_ptrs = a_ptr + src.to(tl.int64)[:, None] * stride_a + dd[None, :]
        b_ptrs = b_ptr + e.to(tl.int64) * stride_be + dd[:, None] * stride_bd + cols[None, :] * stride_bn
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            if EVEN_D:
                a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
                b = tl.load(b_ptrs, mask=nmask[None, :], other=0.0)
            else:
                dm = dd < D - d0
                a = tl.load(a_ptrs, mask=rmask[:, None] & dm[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=dm[:, None] & nmask[None, :], other=0.0)
            acc = _dot(a, b, acc, DOT_BF16)
            a_ptrs += BLOCK_D
            b_ptrs += BLOCK_D * stride_bd
        if SCALE:  # (s * A) @ B = s * (A @ B): the row's gate, applied once in float32
            acc = acc * tl.load(scale_ptr + rows, mask=rmask, other=0.0)[:, None]
        optr = rows.to(tl.int64)[:, None] * stride_o + cols[None, :]
        omask = rmask[:, None] & nmask[None, :]
        if ACT == 1:
            if SAVE_PRE:
                tl.store(pre_ptr + optr, acc.to(pre_ptr.dtype.element_ty), mask=omask)
            acc = _gelu(acc)
        if ACT == 2:
            acc = acc * _gelu_grad(tl.load(pre_ptr + optr, mask=omask, other=0.0).to(tl.float32))
        tl.store(out_ptr + optr, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _grouped_wgrad_kernel(p_ptr, q_ptr, out_ptr, tok_ptr, scale_ptr, kc_ptr, off_ptr,
                          M, N, E, stride_p, stride_q, stride_oe, stride_om,
                          GATHER_P: tl.constexpr, GATHER_Q: tl.constexpr, SCALE_Q: tl.constexpr,
                          DOT_BF16: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr):
    """out[e] ([M, N]) = sum over expert e's rows r of P[src(r), :M]^T Q[src(r), :N] (times scale_R[r])."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_e = num_m * num_n
    e = pid // per_e
    t = pid % per_e
    in_group = GROUP_M * num_n
    first_m = (t // in_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    mi = first_m + (t % in_group) % group_size
    ni = (t % in_group) // group_size
    ii = mi * BLOCK_M + tl.arange(0, BLOCK_M)
    jj = ni * BLOCK_N + tl.arange(0, BLOCK_N)
    imask = ii < M
    jmask = jj < N
    start = tl.load(off_ptr + e)
    count = tl.load(kc_ptr + e)
    rr = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r0 in range(0, count, BLOCK_D):
        rows = start + r0 + rr
        rm = (r0 + rr) < count
        if GATHER_P or GATHER_Q:
            tok = tl.load(tok_ptr + rows, mask=rm, other=0).to(tl.int64)
        if GATHER_P:
            sp = tok
        else:
            sp = rows.to(tl.int64)
        if GATHER_Q:
            sq = tok
        else:
            sq = rows.to(tl.int64)
        p = tl.load(p_ptr + sp[None, :] * stride_p + ii[:, None], mask=rm[None, :] & imask[:, None], other=0.0)
        q = tl.load(q_ptr + sq[:, None] * stride_q + jj[None, :], mask=rm[:, None] & jmask[None, :], other=0.0)
        if SCALE_Q:
            q = (q.to(tl.float32) * tl.load(scale_ptr + rows, mask=rm, other=0.0)[:, None]).to(q_ptr.dtype.element_ty)
        acc = _dot(p, q, acc, DOT_BF16)
    optr = e.to(tl.int64) * stride_oe + ii.to(tl.int64)[:, None] * stride_om + jj[None, :]
    tl.store(out_ptr + optr, acc.to(out_ptr.dtype.element_ty), mask=imask[:, None] & jmask[None, :])


def _default_config(args, meta) -> dict:
    if INTERPRET:  # few programs, small dots: the interpreter's cost is programs x operations
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_D=32, GROUP_M=4, num_warps=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=64, GROUP_M=8, num_warps=8, num_stages=3)


def gemm_configs() -> list:
    """Hopper-sized tiles tried by the tuner (BLOCK_M 64-128, BLOCK_N 128-256, BLOCK_D 64, 3-4 stages)."""
    out = []
    for bm, bn, bd, warps, stages in [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
                                      (64, 128, 64, 4, 4), (64, 256, 64, 8, 3), (128, 128, 64, 8, 3)]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "GROUP_M": 8},
                                 num_warps=warps, num_stages=stages))
    return out


SMEM_BYTES = 220 * 1024  # Hopper allows 227 KB per block; leave room for the epilogue's scratch


def _acc_per_thread(c) -> int:
    return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] // (32 * c.num_warps)


def _pruner(a_name: str, b_name: str, n_name: str):
    """Drop configs whose pipelined operand tiles do not fit in shared memory (float32 weights take twice
    the room), whose BLOCK_N is more than twice the output width, or - for the GELU epilogues - that hold
    more than 64 accumulators per thread (ptxas spills there: tools/sm90_compile_report.py)."""
    def prune(configs, named_args, **kwargs):
        a_bytes, b_bytes = named_args[a_name].element_size(), named_args[b_name].element_size()
        n = named_args[n_name]
        act = kwargs.get("ACT", 0)
        keep = [c for c in configs
                if c.num_stages * c.kwargs["BLOCK_D"] * (c.kwargs["BLOCK_M"] * a_bytes + c.kwargs["BLOCK_N"] * b_bytes)
                <= SMEM_BYTES and c.kwargs["BLOCK_N"] <= max(128, 2 * next_pow2(n))
                and (act == ACT_NONE or _acc_per_thread(c) <= 64)]
        return keep or configs[-1:]
    return prune


_GEMM = Launcher(_grouped_gemm_kernel, _default_config, gemm_configs(),
                 key=("N", "D", "E", "GATHER", "SCALE", "ACT", "SAVE_PRE", "DOT_BF16"), bucket=("R",),
                 prune=_pruner("a_ptr", "b_ptr", "N"), name="grouped_gemm")
_WGRAD = Launcher(_grouped_wgrad_kernel, _default_config, gemm_configs(),
                  key=("M", "N", "E", "GATHER_P", "GATHER_Q", "SCALE_Q", "DOT_BF16"), bucket=("E",),
                  prune=_pruner("p_ptr", "q_ptr", "N"), name="grouped_wgrad")


def dot_bf16(x: torch.Tensor) -> bool:
    """Products in bf16 (GPU, bf16/fp16 activations) or float32 (the interpreter; float32 activations)."""
    return not INTERPRET and x.dtype != torch.float32


def grouped_gemm(a: torch.Tensor, w_EDN: torch.Tensor, plan_rows: tuple, *, num_rows: int, gather: bool,
                 scale_R: torch.Tensor | None = None, act: int = ACT_NONE, pre_RN: torch.Tensor | None = None,
                 save_pre: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[R, N] = epilogue(scale * a[src] @ w[e]) over the plan's rows (see the module doc).

    plan_rows = (token_index_R, kept_counts_E, offsets_E1); w_EDN any strided [E, D, N] view with a
    unit stride on one of its last two dims. act GELU writes the pre-activation into pre_RN when
    save_pre; act GELU_BWD reads it."""
    tok, kc, off = plan_rows
    E, D, N = w_EDN.shape
    a = a if a.stride(-1) == 1 else a.contiguous()
    out = empty(num_rows, N, dtype=out_dtype or a.dtype, device=a.device)
    if num_rows == 0 or N == 0:
        return out
    if act == ACT_GELU and save_pre:
        assert pre_RN is not None and pre_RN.shape == out.shape
    pre = pre_RN if pre_RN is not None else out
    scale = scale_R if scale_R is not None else kc
    args = (a, w_EDN, out, pre, tok, scale, kc, off, num_rows, N, D, E, a.stride(0), w_EDN.stride(0),
            w_EDN.stride(1), w_EDN.stride(2), out.stride(0))

    def grid(c):
        return ((cdiv(num_rows, c["BLOCK_M"]) + E) * cdiv(N, c["BLOCK_N"]),)

    even = D % 64 == 0  # every config's BLOCK_D divides 64
    _GEMM(grid, args, dict(GATHER=gather, SCALE=scale_R is not None, ACT=act, SAVE_PRE=save_pre,
                           DOT_BF16=dot_bf16(a), E_PAD=max(16, next_pow2(E)), EVEN_D=even))
    return out


def grouped_wgrad(p: torch.Tensor, q: torch.Tensor, plan_rows: tuple, *, gather_p: bool, gather_q: bool,
                  scale_R: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """[E, Mp, Nq]: for each expert, the sum over its rows r of p[src(r)]^T (scale_r q[src(r)])."""
    tok, kc, off = plan_rows
    E = kc.shape[0]
    p = p if p.stride(-1) == 1 else p.contiguous()
    q = q if q.stride(-1) == 1 else q.contiguous()
    M, N = p.shape[1], q.shape[1]
    out = empty(E, M, N, dtype=out_dtype, device=p.device)
    if out.numel() == 0:
        return out
    scale = scale_R if scale_R is not None else kc

    def grid(c):
        return (E * cdiv(M, c["BLOCK_M"]) * cdiv(N, c["BLOCK_N"]),)

    _WGRAD(grid, (p, q, out, tok, scale, kc, off, M, N, E, p.stride(0), q.stride(0), out.stride(0), out.stride(1)),
           dict(GATHER_P=gather_p, GATHER_Q=gather_q, SCALE_Q=scale_R is not None, DOT_BF16=dot_bf16(p)))
    return out
