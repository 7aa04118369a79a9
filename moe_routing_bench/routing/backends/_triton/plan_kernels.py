"""Plan kernels: per-expert histogram, scan, slots, drops, rows, token index and gates on the device.

Same function as `moe_routing_bench.plan.plan_tensors` (same tuple, same values, ids exact), with no
host synchronisation and no atomics, so the result is deterministic and CUDA-graph capturable.

Assignments a = t*K + k are cut into blocks of BLOCK_T whole tokens. Slots with `valid_TK` False go
to bucket E (it sorts last, like the reference), so NUM_BINS = next_pow2(E + 1) with a validity mask
and next_pow2(E) without.

`position` policy (two launches):
  1. `_hist_kernel`   one program per block: histogram of the block's buckets -> hist[NB, NUM_BINS];
                      skipped when the fused router already wrote one per router block (`block_hist`,
                      router blocks of `hist_block_t` tokens dividing the plan's: the rank kernel then
                      reads RATIO router-block rows per plan block).
  2. `_rank_kernel`   one program per block: reads every block's histogram (NB x NUM_BINS ints, from
                      L2) for the assignments of its bucket in earlier blocks and the totals; then
                      counts_E, kept_counts_E = min(counts, C), offsets_E1 (ragged: scan of kept
                      counts; padded: e*C) - written by program 0 - and, per assignment, its rank
                      among the earlier ones of its block with the same bucket (pairwise compare in
                      CH-wide chunks; a block is small), slot = earlier blocks + rank, kept = valid
                      and slot < C, row, token_index of kept rows, gate (renormalised over kept when
                      asked); each program also writes T into the empty rows of its share of the R
                      rows (disjoint from the kept rows). Gathers by bucket read a per-program copy
                      of the per-bucket vectors from memory after a CTA barrier.
`score` policy: step 1, `_scan_kernel` (totals, counts, offsets, bucket starts), one stable
torch.sort of the int64 key (bucket, -weight) - the priority order is global within an expert,
which the block scheme cannot give; a torch fallback, documented in the backend - then
`_score_kernel` (slot = sorted position - bucket start, then the same finishing writes) and
`_gate_kernel`.

Gates: the kernels write gate_TK without autograd. When the weights require grad (training), the
gate is recomputed from kept_TK by the reference's torch arithmetic so the router gets its gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...plan import num_rows
from .launch import INTERPRET, LAUNCHERS, TUNE_CACHE, Launcher, autotune_enabled, capturing, cdiv, empty, next_pow2


@triton.jit
def _bucket(ids_ptr, valid_ptr, a, m, E, HAS_VALID: tl.constexpr):
    e = tl.load(ids_ptr + a, mask=m, other=0).to(tl.int32)
    e = tl.minimum(tl.maximum(e, 0), E - 1)  # out-of-range ids never index memory
    if HAS_VALID:
        v = tl.load(valid_ptr + a, mask=m, other=0)
        e = tl.where(v != 0, e, E)
    return e


@triton.jit
def _gate(w, kept, vmask, RENORM: tl.constexpr):
    g = tl.where(kept, w, 0.0)
    if RENORM:
        kept_sum = tl.sum(g, axis=1)
        total = tl.sum(tl.where(vmask, w, 0.0), axis=1)
        scale = tl.where(kept_sum > 0, total / tl.maximum(kept_sum, 1e-30), 0.0)
        g = g * scale[:, None]
    return g


@triton.jit
def _fill_empty_rows(pid, tok_ptr, kept_counts_ptr, kept_total, T, C, R,
                     PADDED: tl.constexpr, ROWS_PER_PROG: tl.constexpr):
    """token_index_R = T for the empty rows among this program's share of the R rows."""
    r = pid * ROWS_PER_PROG + tl.arange(0, ROWS_PER_PROG)
    rm = r < R
    if PADDED:
        re = r // C
        kc = tl.load(kept_counts_ptr + re, mask=rm, other=0, cache_modifier=".cg")
        empty = rm & ((r - re * C) >= kc)
    else:
        empty = rm & (r >= kept_total)
    tl.store(tok_ptr + r, tl.zeros([ROWS_PER_PROG], tl.int64) + T, mask=empty)


@triton.jit
def _hist_kernel(ids_ptr, valid_ptr, hist_ptr, T, E,
                 K: tl.constexpr, K_PAD: tl.constexpr, HAS_VALID: tl.constexpr,
                 NUM_BINS: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK_T * K_PAD)
    t = pid * BLOCK_T + i // K_PAD
    k = i % K_PAD
    m = (t < T) & (k < K)
    a = t.to(tl.int64) * K + k
    e = _bucket(ids_ptr, valid_ptr, a, m, E, HAS_VALID)
    h = tl.histogram(e, NUM_BINS, mask=m)
    tl.store(hist_ptr + pid * NUM_BINS + tl.arange(0, NUM_BINS), h)


@triton.jit
def _rank_kernel(ids_ptr, valid_ptr, w_ptr, hist_ptr, off_ptr, totals_ptr, scratch_ptr,
                 counts_ptr, kept_counts_ptr, offsets_ptr,
                 slot_ptr, kept_ptr, row_ptr, tok_ptr, gate_ptr,
                 T, E, C, R, NBH,
                 K: tl.constexpr, K_PAD: tl.constexpr, HAS_VALID: tl.constexpr, HAS_CAP: tl.constexpr,
                 PADDED: tl.constexpr, RENORM: tl.constexpr, NUM_BINS: tl.constexpr, SCANNED: tl.constexpr,
                 RATIO: tl.constexpr,
                 BLOCK_T: tl.constexpr, CH: tl.constexpr, ROWS_PER_PROG: tl.constexpr, BLOCK_NB: tl.constexpr):
    pid = tl.program_id(0)
    bins = tl.arange(0, NUM_BINS)
    sp = scratch_ptr + pid.to(tl.int64) * (3 * NUM_BINS)
    if SCANNED:  # `_block_scan_kernel` wrote off[b, e] and the totals
        total = tl.load(totals_ptr + bins)
    else:  # this block's offset per bucket (earlier blocks) and the totals, from every block's histogram
        before = tl.zeros([NUM_BINS], tl.int32)
        total = tl.zeros([NUM_BINS], tl.int32)
        for b0 in range(0, NBH, BLOCK_NB):
            rb = b0 + tl.arange(0, BLOCK_NB)
            h = tl.load(hist_ptr + rb[:, None] * NUM_BINS + bins[None, :], mask=(rb < NBH)[:, None], other=0)
            total += tl.sum(h, axis=0)
            before += tl.sum(tl.where((rb < pid * RATIO)[:, None], h, 0), axis=0)
        tl.store(sp + bins, before)
    emask = bins < E
    if HAS_CAP:
        kc = tl.minimum(total, C)
    else:
        kc = total
    kc = tl.where(emask, kc, 0)
    kept_total = tl.sum(kc, axis=0)
    if PADDED:
        starts = bins * C
    else:
        starts = tl.cumsum(kc, axis=0) - kc
    if pid == 0:
        tl.store(counts_ptr + bins, total, mask=emask)
        tl.store(kept_counts_ptr + bins, kc, mask=emask)
        tl.store(offsets_ptr + bins, starts, mask=emask)
        if PADDED:
            tl.store(offsets_ptr + E, E * C)
        else:
            tl.store(offsets_ptr + E, kept_total)
    # per-program copies in memory, read back by bucket (a gather), after a CTA barrier
    tl.store(sp + NUM_BINS + bins, starts)
    tl.store(sp + 2 * NUM_BINS + bins, kc)
    tl.debug_barrier()

    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    kk = tl.arange(0, K_PAD)
    m = (t < T)[:, None] & (kk < K)[None, :]
    a = t.to(tl.int64)[:, None] * K + kk[None, :]
    e = _bucket(ids_ptr, valid_ptr, a, m, E, HAS_VALID)
    # rank among the earlier assignments of this block in the same bucket
    a_lo = pid.to(tl.int64) * (BLOCK_T * K)
    a_hi = tl.minimum(a_lo + BLOCK_T * K, T * K)
    rank = tl.zeros([BLOCK_T, K_PAD], tl.int32)
    for c in range(0, BLOCK_T * K, CH):
        j = a_lo + c + tl.arange(0, CH)
        mj = j < a_hi
        ej = _bucket(ids_ptr, valid_ptr, j, mj, E, HAS_VALID)
        ej = tl.where(mj, ej, -1)
        same = (ej[None, None, :] == e[:, :, None]) & (j[None, None, :] < a[:, :, None])
        rank += tl.sum(same.to(tl.int32), axis=2)

    if SCANNED:
        slot = tl.load(off_ptr + pid * RATIO * NUM_BINS + e, mask=m, other=0) + rank
    else:
        slot = tl.load(sp + e, mask=m, other=0, cache_modifier=".cg") + rank
    kept = m & (e < E)
    if HAS_CAP:
        kept = kept & (slot < C)
    ec = tl.minimum(e, E - 1)
    start = tl.load(sp + NUM_BINS + ec, mask=kept, other=0, cache_modifier=".cg")
    row = tl.where(kept, (start + slot).to(tl.int64), -1)
    tl.store(slot_ptr + a, slot, mask=m)
    tl.store(kept_ptr + a, kept.to(tl.uint8), mask=m)
    tl.store(row_ptr + a, row, mask=m)
    tok = tl.zeros([BLOCK_T, K_PAD], tl.int64) + t.to(tl.int64)[:, None]
    tl.store(tok_ptr + tl.where(kept, row, 0), tok, mask=kept & (row < R))  # (row < R always; guards memory)

    w = tl.load(w_ptr + a, mask=m, other=0.0).to(tl.float32)
    g = _gate(w, kept, m & (e < E), RENORM)
    tl.store(gate_ptr + a, g, mask=m)

    _fill_empty_rows(pid, tok_ptr, sp + 2 * NUM_BINS, kept_total, T, C, R, PADDED, ROWS_PER_PROG)


@triton.jit
def _block_scan_kernel(hist_ptr, off_ptr, totals_ptr, NB,
                       NUM_BINS: tl.constexpr, BPP: tl.constexpr, BLOCK_NB: tl.constexpr):
    """off[b, e] = assignments of bucket e in blocks before b; totals[e]. BPP buckets per program."""
    bins = tl.program_id(0) * BPP + tl.arange(0, BPP)
    carry = tl.zeros([BPP], tl.int32)
    for b0 in range(0, NB, BLOCK_NB):
        rb = b0 + tl.arange(0, BLOCK_NB)
        m = (rb < NB)[:, None] & (bins >= 0)[None, :]
        ptrs = rb[:, None] * NUM_BINS + bins[None, :]
        h = tl.load(hist_ptr + ptrs, mask=m, other=0)
        tl.store(off_ptr + ptrs, tl.cumsum(h, axis=0) - h + carry[None, :], mask=m)
        carry += tl.sum(h, axis=0)
    tl.store(totals_ptr + bins, carry)


@triton.jit
def _scan_kernel(hist_ptr, counts_ptr, kept_counts_ptr, offsets_ptr, starts_ptr,
                 NB, E, C, HAS_CAP: tl.constexpr, PADDED: tl.constexpr,
                 NUM_BINS: tl.constexpr, BLOCK_NB: tl.constexpr):
    """Score policy: totals per bucket -> counts, kept counts, offsets, bucket starts (one program)."""
    bins = tl.arange(0, NUM_BINS)
    total = tl.zeros([NUM_BINS], tl.int32)
    for b0 in range(0, NB, BLOCK_NB):
        rb = b0 + tl.arange(0, BLOCK_NB)
        h = tl.load(hist_ptr + rb[:, None] * NUM_BINS + bins[None, :], mask=(rb < NB)[:, None], other=0)
        total += tl.sum(h, axis=0)
    emask = bins < E
    tl.store(counts_ptr + bins, total, mask=emask)
    if HAS_CAP:
        kc = tl.minimum(total, C)
    else:
        kc = total
    kc = tl.where(emask, kc, 0)
    tl.store(kept_counts_ptr + bins, kc, mask=emask)
    if PADDED:
        tl.store(offsets_ptr + bins, bins * C, mask=emask)
        tl.store(offsets_ptr + E, E * C)
    else:
        tl.store(offsets_ptr + bins, tl.cumsum(kc, axis=0) - kc, mask=emask)
        tl.store(offsets_ptr + E, tl.sum(kc, axis=0))
    tl.store(starts_ptr + bins, tl.cumsum(total, axis=0) - total)


@triton.jit
def _score_kernel(order_ptr, ids_ptr, valid_ptr, starts_ptr, kept_counts_ptr, offsets_ptr,
                  slot_ptr, kept_ptr, row_ptr, tok_ptr,
                  T, E, C, R, A,
                  K: tl.constexpr, HAS_VALID: tl.constexpr, HAS_CAP: tl.constexpr, PADDED: tl.constexpr,
                  BLOCK: tl.constexpr, ROWS_PER_PROG: tl.constexpr):
    pid = tl.program_id(0)
    p = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = p < A
    a = tl.load(order_ptr + p, mask=m, other=0)
    e = _bucket(ids_ptr, valid_ptr, a, m, E, HAS_VALID)
    slot = (p - tl.load(starts_ptr + e, mask=m, other=0)).to(tl.int32)
    kept = m & (e < E)
    if HAS_CAP:
        kept = kept & (slot < C)
    ec = tl.minimum(e, E - 1)
    if PADDED:
        start = ec * C
    else:
        start = tl.load(offsets_ptr + ec, mask=kept, other=0)
    row = tl.where(kept, (start + slot).to(tl.int64), -1)
    tl.store(slot_ptr + a, slot, mask=m)
    tl.store(kept_ptr + a, kept.to(tl.uint8), mask=m)
    tl.store(row_ptr + a, row, mask=m)
    tl.store(tok_ptr + tl.where(kept, row, 0), a // K, mask=kept & (row < R))
    _fill_empty_rows(pid, tok_ptr, kept_counts_ptr, tl.load(offsets_ptr + E), T, C, R, PADDED, ROWS_PER_PROG)


@triton.jit
def _gate_kernel(kept_ptr, w_ptr, ids_ptr, valid_ptr, gate_ptr, T, E,
                 K: tl.constexpr, K_PAD: tl.constexpr, HAS_VALID: tl.constexpr, RENORM: tl.constexpr,
                 BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    kk = tl.arange(0, K_PAD)
    m = (t < T)[:, None] & (kk < K)[None, :]
    a = t.to(tl.int64)[:, None] * K + kk[None, :]
    kept = tl.load(kept_ptr + a, mask=m, other=0) != 0
    w = tl.load(w_ptr + a, mask=m, other=0.0).to(tl.float32)
    vmask = m
    if HAS_VALID:
        vmask = m & (tl.load(valid_ptr + a, mask=m, other=0) != 0)
    tl.store(gate_ptr + a, _gate(w, kept, vmask, RENORM), mask=m)


def _score_order(ids_A: torch.Tensor, valid_A: torch.Tensor | None, weights_A: torch.Tensor, E: int) -> torch.Tensor:
    """Stable sort of the key (bucket, -weight): the score policy's priority order (torch fallback)."""
    bucket = ids_A.to(torch.int64).clamp(0, E - 1)
    if valid_A is not None:
        bucket = torch.where(valid_A, bucket, E)
    neg = (-weights_A.detach().float()) + 0.0  # -0.0 -> +0.0, as the reference's float sort sees them
    bits = neg.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64) + (1 << 31)
    return torch.sort(bucket * (1 << 32) + ordered, stable=True).indices


def gate_reference(weights_TK, kept_TK, valid_TK, renormalize_kept):
    """The reference's gate arithmetic in torch (differentiable in the weights)."""
    weights = weights_TK.float()
    gate = torch.where(kept_TK, weights, torch.zeros_like(weights))
    if renormalize_kept:
        kept_sum = gate.sum(-1, keepdim=True)
        total = weights.sum(-1, keepdim=True) if valid_TK is None else torch.where(valid_TK, weights, 0.0).sum(-1, keepdim=True)
        gate = gate * torch.where(kept_sum > 0, total / kept_sum.clamp_min(1e-30), torch.zeros_like(kept_sum))
    return gate


# Launch configs of the position-policy plan: (assignments per block, pairwise chunk, rank-kernel warps,
# SCANNED: a separate parallel block scan (3 launches) or each rank program summing the histograms
# itself (2 launches)). On a GPU with autotuning on, the first call per device and shape class times
# these (after checking each against the first), keeps the fastest in the tune cache; otherwise
# DEFAULT_PLAN_CONFIG. `plan_tensors(..., config=...)` forces one. A 5th element says whether to read the
# fused router's histogram (True, the default where it aligns) or count again at the plan's block size:
# the router's blocks are small, so its histogram has more rows for the rank programs to read; the
# tuner times both.
PLAN_CONFIGS = [(256, 32, 4, False), (256, 64, 8, False), (256, 64, 8, True), (128, 128, 8, True),
                (128, 64, 4, True), (64, 64, 4, True), (512, 64, 8, True), (64, 32, 4, True), (64, 32, 2, True)]
DEFAULT_PLAN_CONFIG = (1024, 256, 4, False, False) if INTERPRET else (256, 32, 4, False, False)  # same length: CPU tests see the GPU shape


class _PlanTuning:
    """The plan's config choice (several launches, so not one Launcher): `last` as in `configs_used`."""

    name = "plan"

    def __init__(self):
        self.chosen: dict[str, tuple] = {}
        self.last: dict = {}
        LAUNCHERS.append(self)


_PLAN = _PlanTuning()


def _fixed(**cfg):
    return lambda args, meta: cfg


_HIST = Launcher(_hist_kernel, _fixed(num_warps=4), name="plan_hist")
_BSCAN = Launcher(_block_scan_kernel, _fixed(num_warps=4), name="plan_block_scan")
_RANK = {w: Launcher(_rank_kernel, _fixed(num_warps=w), name=f"plan_rank_w{w}") for w in (2, 4, 8)}  # a config's warps
_SCAN = Launcher(_scan_kernel, _fixed(num_warps=4), name="plan_scan")
_SCORE = Launcher(_score_kernel, _fixed(num_warps=4), name="plan_score")
_GATE = Launcher(_gate_kernel, _fixed(num_warps=4), name="plan_gate")


def _geometry(T, K, E, R, has_valid, cfg):
    block_a = cfg[0]  # a config has 4 or 5 elements (the 5th: read the router's histogram)
    K_PAD = next_pow2(K)
    BLOCK_T = max(1, block_a // K_PAD)
    NB = cdiv(T, BLOCK_T)
    NUM_BINS = next_pow2(E + 1 if has_valid else E)
    return K_PAD, BLOCK_T, NB, NUM_BINS


def _position_plan(ids, valid, w, outs, T, K, E, C, R, has_valid, has_cap, padded, renorm, cfg, block_hist=None):
    counts, kept_counts, offsets, slot, kept_u8, row, tok, gate = outs
    block_a, ch, warps, scanned = cfg
    K_PAD, BLOCK_T, NB, NUM_BINS = _geometry(T, K, E, R, has_valid, cfg)
    ratio = _hist_ratio(block_hist, BLOCK_T, NUM_BINS, has_valid)
    NBH = block_hist[0].shape[0] if ratio else NB  # histogram rows
    dev = ids.device
    work = empty((NBH + 3 * NB + 1) * NUM_BINS + (0 if ratio else NB * NUM_BINS), dtype=torch.int32, device=dev)
    if ratio:
        hist, rest = block_hist[0].view(-1), work
    else:
        hist, rest = work[: NB * NUM_BINS], work[NB * NUM_BINS:]
        _HIST(lambda c: (NB,), (ids, valid, hist, T, E),
              dict(K=K, K_PAD=K_PAD, HAS_VALID=has_valid, NUM_BINS=NUM_BINS, BLOCK_T=BLOCK_T))
    off, totals, scratch = (rest[: NBH * NUM_BINS], rest[NBH * NUM_BINS: (NBH + 1) * NUM_BINS],
                            rest[(NBH + 1) * NUM_BINS:])
    if scanned:
        bpp = max(1, min(NUM_BINS, 8192 // next_pow2(NBH)))
        _BSCAN(lambda c: (NUM_BINS // bpp,), (hist, off, totals, NBH),
               dict(NUM_BINS=NUM_BINS, BPP=bpp, BLOCK_NB=max(1, min(next_pow2(NBH), 8192 // bpp))))
    _RANK[warps](
        lambda c: (NB,), (ids, valid, w, hist, off, totals, scratch, counts, kept_counts, offsets, slot, kept_u8, row,
                          tok, gate, T, E, C, R, NBH),
        dict(K=K, K_PAD=K_PAD, HAS_VALID=has_valid, HAS_CAP=has_cap, PADDED=padded, RENORM=renorm,
             NUM_BINS=NUM_BINS, SCANNED=scanned, RATIO=ratio or 1, BLOCK_T=BLOCK_T, CH=min(ch, next_pow2(BLOCK_T * K)),
             ROWS_PER_PROG=next_pow2(max(1, cdiv(R, NB))), BLOCK_NB=max(1, min(next_pow2(NBH), 4096 // NUM_BINS))))


def _hist_ratio(block_hist, block_t: int, num_bins: int, has_valid: bool) -> int:
    """Plan blocks per router block when the router's histogram can stand for the plan's, else 0."""
    if block_hist is None or has_valid:
        return 0
    hist, hist_block_t = block_hist
    if hist.shape[1] != num_bins or block_t % hist_block_t:
        return 0
    return block_t // hist_block_t


def _tuned_plan_config(key: str, run, candidates: list) -> tuple:
    """The config for this shape class: chosen before (this process or the tune cache), else time every
    candidate on this shape (each checked against the first) and keep the fastest."""
    if key in _PLAN.chosen:
        _PLAN.last = {"key": key, "config": _PLAN.chosen[key], "source": "tuned"}
        return _PLAN.chosen[key]
    cached = TUNE_CACHE.get(key)
    if cached is not None:
        _PLAN.chosen[key] = tuple(cached)
        _PLAN.last = {"key": key, "config": tuple(cached), "source": "tune-cache"}
        return tuple(cached)
    if capturing():
        _PLAN.last = {"key": key, "config": DEFAULT_PLAN_CONFIG, "source": "fixed (capturing)"}
        return DEFAULT_PLAN_CONFIG
    from triton.testing import do_bench

    ref, times = None, {}
    for cfg in candidates:
        try:
            out = run(cfg)
            if ref is None:
                ref = [t.clone() for t in out[:7]]
            elif not all(torch.equal(a, b) for a, b in zip(out[:7], ref)):
                continue  # never pick a config that computes something else
            times[cfg] = do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=25, return_mode="median")
        except Exception:  # a config that does not compile here is skipped
            continue
    best = min(times, key=times.get) if times else DEFAULT_PLAN_CONFIG
    TUNE_CACHE.put(key, list(best), {str(k): v for k, v in times.items()})
    _PLAN.chosen[key] = best
    _PLAN.last = {"key": key, "config": best, "source": "tuned now"}
    return best


# The signature repeats routing/plan.py's plan_tensors on purpose: backends plug in through it.
def plan_tensors(
    expert_ids_TK: torch.Tensor,
    weights_TK: torch.Tensor,
    valid_TK: torch.Tensor | None,
    num_experts: int,
    capacity: int | None,
    drop_policy: str,
    renormalize_kept: bool,
    layout: str,
    *,
    config: tuple | None = None,
    block_hist: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Triton version of `moe_routing_bench.plan.plan_tensors` (same signature and result); `config`
    forces one position-policy launch config (tests), else the tuned or default one. `block_hist`:
    (int32 [blocks, bins] expert histogram of router blocks, tokens per block) from the fused router,
    used instead of a histogram launch where its blocks divide the plan's."""
    T, K = expert_ids_TK.shape
    E, A = num_experts, T * K
    dev = expert_ids_TK.device
    R = num_rows(T, K, E, capacity, layout)
    if A >= 2**31 or R >= 2**31:
        raise ValueError("plan kernels index assignments with int32: T*K and R must be < 2**31")
    ids = expert_ids_TK if expert_ids_TK.is_contiguous() else expert_ids_TK.contiguous()
    w = weights_TK.detach()
    if w.dtype != torch.float32 or not w.is_contiguous():
        w = w.float().contiguous()
    has_valid = valid_TK is not None
    valid = valid_TK.contiguous().view(torch.uint8) if has_valid else ids
    has_cap = capacity is not None
    C = capacity if has_cap else max(A, 1)
    padded = layout == "padded"

    small = empty(3 * E + 1, dtype=torch.int32, device=dev)
    counts, kept_counts, offsets = small[:E], small[E: 2 * E], small[2 * E:]
    slot = empty(T, K, dtype=torch.int32, device=dev)
    kept = empty(T, K, dtype=torch.bool, device=dev)
    row = empty(T, K, dtype=torch.int64, device=dev)
    tok = empty(R, dtype=torch.int64, device=dev)
    gate = empty(T, K, dtype=torch.float32, device=dev)
    kept_u8 = kept.view(torch.uint8)
    outs = (counts, kept_counts, offsets, slot, kept_u8, row, tok, gate)

    if drop_policy == "position":
        def run(cfg):  # a 5th element False: count again instead of reading the router's histogram
            use_router_hist = len(cfg) < 5 or bool(cfg[4])
            _position_plan(ids, valid, w, outs, T, K, E, C, R, has_valid, has_cap, padded, renormalize_kept,
                           tuple(cfg[:4]), block_hist if use_router_hist else None)
            return outs

        cfg = config
        if cfg is None:
            cfg = DEFAULT_PLAN_CONFIG
            if autotune_enabled():
                hist_bt = block_hist[1] if block_hist is not None else 0
                key = (f"plan|K={K}|E={E}|valid={has_valid}|cap={has_cap}|padded={padded}|renorm={renormalize_kept}"
                       f"|router_hist_block={hist_bt}|T~{next_pow2(T)}")
                # a fine router histogram makes the rank programs read more rows: time both ways
                uses = (True, False) if block_hist is not None else (False,)
                cfg = _tuned_plan_config(key, run, [(*c, u) for c in PLAN_CONFIGS for u in uses])
            else:
                _PLAN.last = {"key": "plan", "config": cfg, "source": "fixed"}
        run(cfg)
    else:
        K_PAD, BLOCK_T, NB, NUM_BINS = _geometry(T, K, E, R, has_valid, DEFAULT_PLAN_CONFIG)
        work = empty(NB * NUM_BINS + NUM_BINS, dtype=torch.int32, device=dev)
        hist, starts = work[: NB * NUM_BINS], work[NB * NUM_BINS:]
        _HIST(lambda c: (NB,), (ids, valid, hist, T, E),
              dict(K=K, K_PAD=K_PAD, HAS_VALID=has_valid, NUM_BINS=NUM_BINS, BLOCK_T=BLOCK_T))
        _SCAN(lambda c: (1,), (hist, counts, kept_counts, offsets, starts, NB, E, C),
              dict(HAS_CAP=has_cap, PADDED=padded, NUM_BINS=NUM_BINS,
                   BLOCK_NB=max(1, min(next_pow2(NB), 4096 // NUM_BINS))))
        order = _score_order(ids.view(-1), valid_TK.reshape(-1) if has_valid else None, w.view(-1), E)
        block = 4096 if INTERPRET else 1024
        nprog = cdiv(A, block)
        _SCORE(lambda c: (nprog,), (order, ids, valid, starts, kept_counts, offsets, slot, kept_u8, row, tok,
                                    T, E, C, R, A),
               dict(K=K, HAS_VALID=has_valid, HAS_CAP=has_cap, PADDED=padded, BLOCK=block,
                    ROWS_PER_PROG=next_pow2(max(1, cdiv(R, nprog)))))
        _GATE(lambda c: (NB,), (kept_u8, w, ids, valid, gate, T, E),
              dict(K=K, K_PAD=K_PAD, HAS_VALID=has_valid, RENORM=renormalize_kept, BLOCK_T=BLOCK_T))

    if weights_TK.requires_grad and torch.is_grad_enabled():
        gate = gate_reference(weights_TK, kept, valid_TK, renormalize_kept)
    return counts, kept_counts, offsets, slot, kept, row, tok, gate
