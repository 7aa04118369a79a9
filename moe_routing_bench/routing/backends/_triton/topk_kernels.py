"""Fused router kernel: softmax or sigmoid(+bias), top-k and gate weights in one pass over the logits.

One program routes BLOCK_T tokens; each loads its [BLOCK_T, E] logit tile once (any float dtype,
upcast to float32), picks the K largest selection keys by K rounds of (row max, lowest column
holding it) - so the lower expert id wins ties exactly as `routers.topk_lowest_id` - and writes
int64 ids [T, K], float32 weights [T, K] and, optionally, the float32 router distribution [T, E].

| mode | strategy                 | selection key          | weight                                  |
|------|--------------------------|------------------------|-----------------------------------------|
| 0    | top1                     | logits                 | softmax(logits)[id]                     |
| 1    | topk-hard                | logits                 | 1/K                                     |
| 2    | softk (renormalize)      | logits                 | softmax(selected logits / temperature)  |
| 3    | softk (renormalize=False)| logits                 | softmax(logits / temperature)[id]       |
| 4    | aux-free                 | sigmoid(logits) + bias | sigmoid[id] / sum of the K selected     |

probs_TE is softmax(logits) for modes 0-3 and sigmoid / row sum for mode 4 (as in `routers.route`).
Writing it costs T*E*4 bytes more than the ids and weights (about the size of the logits read);
`write_probs=False` skips it (the backend always writes it, so `Routing` stays complete).
On the GPU the sigmoid uses libdevice `exp` and a correctly rounded division, the same arithmetic as
torch's CUDA sigmoid, so aux-free selections on sigmoid + bias agree bit for bit; the interpreter
uses numpy's exp (1 ulp off torch's CPU sigmoid at most).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import INTERPRET, Launcher, cdiv, empty, next_pow2

if not INTERPRET:  # libdevice is not patched by the interpreter
    from triton.language.extra import libdevice
else:  # pragma: no cover - only the constexpr-false branch references it
    libdevice = None

MODES = {"top1": 0, "topk-hard": 1, "softk": 2, "softk-norenorm": 3, "aux-free": 4}
MAX_EXPERTS = 4096
MAX_TOP_K = 16


@triton.jit
def _route_kernel(
    x_ptr, bias_ptr, ids_ptr, w_ptr, probs_ptr, hist_ptr,
    T, E, stride_x, temperature,
    K: tl.constexpr, K_PAD: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
    WRITE_PROBS: tl.constexpr, ACCURATE_EXP: tl.constexpr, WRITE_HIST: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = cols < E
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.where(cmask[None, :], x, float("-inf"))  # rows past T stay finite (no NaN warnings)

    if MODE == 4:
        if ACCURATE_EXP:
            ex = libdevice.exp(-x)
        else:
            ex = tl.exp(-x)
        scores = tl.math.div_rn(tl.full([BLOCK_T, BLOCK_E], 1.0, tl.float32), 1.0 + ex)
        scores = tl.where(cmask[None, :], scores, 0.0)
        key = scores
        if HAS_BIAS:
            b = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            key = scores + b[None, :]
    else:
        key = x

    kcols = tl.arange(0, K_PAD)
    ids = tl.zeros([BLOCK_T, K_PAD], tl.int32)
    vals = tl.zeros([BLOCK_T, K_PAD], tl.float32)
    avail = cmask[None, :] & (rows[:, None] >= 0)
    for j in tl.static_range(K):
        kv = tl.where(avail, key, float("-inf"))
        m = tl.max(kv, axis=1)
        cand = avail & (kv == m[:, None])
        idx = tl.min(tl.where(cand, cols[None, :], BLOCK_E), axis=1)
        idx = tl.minimum(idx, E - 1)  # NaN rows: keep ids in range
        hit = cols[None, :] == idx[:, None]
        avail = avail & (~hit)
        if MODE == 4:
            v = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        else:
            v = m  # the key is the logit itself
        ids = tl.where(kcols[None, :] == j, idx[:, None], ids)
        vals = tl.where(kcols[None, :] == j, v[:, None], vals)

    kvalid = kcols[None, :] < K
    if MODE == 4:
        w = vals / tl.sum(tl.where(kvalid, vals, 0.0), axis=1)[:, None]
    elif MODE == 1:
        w = tl.full([BLOCK_T, K_PAD], 1.0, tl.float32) / K
    elif MODE == 2:
        z = vals / temperature
        zmax = tl.max(tl.where(kvalid, z, float("-inf")), axis=1)
        ez = tl.where(kvalid, tl.exp(z - zmax[:, None]), 0.0)
        w = ez / tl.sum(ez, axis=1)[:, None]
    elif MODE == 3:
        zx = x / temperature
        zm = tl.max(zx, axis=1)
        s = tl.sum(tl.where(cmask[None, :], tl.exp(zx - zm[:, None]), 0.0), axis=1)
        w = tl.exp(vals / temperature - zm[:, None]) / s[:, None]
    else:
        xm = tl.max(x, axis=1)
        s = tl.sum(tl.where(cmask[None, :], tl.exp(x - xm[:, None]), 0.0), axis=1)
        w = tl.exp(vals - xm[:, None]) / s[:, None]

    omask = rmask[:, None] & kvalid
    optr = rows64[:, None] * K + kcols[None, :]
    tl.store(ids_ptr + optr, ids.to(tl.int64), mask=omask)
    tl.store(w_ptr + optr, w, mask=omask)
    if WRITE_HIST:  # this block's expert histogram, for the plan (saves its histogram launch)
        h = tl.histogram(tl.reshape(ids, [BLOCK_T * K_PAD]), BLOCK_E, mask=tl.reshape(omask, [BLOCK_T * K_PAD]))
        tl.store(hist_ptr + pid * BLOCK_E + cols, h)

    if WRITE_PROBS:
        if MODE == 4:
            p = scores / tl.sum(scores, axis=1)[:, None]
        else:
            xm2 = tl.max(x, axis=1)
            pe = tl.where(cmask[None, :], tl.exp(x - xm2[:, None]), 0.0)
            p = pe / tl.sum(pe, axis=1)[:, None]
        tl.store(probs_ptr + rows64[:, None] * E + cols[None, :], p, mask=mask)


def _default_config(T: int, E: int) -> dict:
    block_e = next_pow2(E)
    if INTERPRET:
        block_t = max(1, min(next_pow2(T), 16384 // block_e))
        return dict(BLOCK_T=block_t, num_warps=4)
    block_t = max(1, min(32, 2048 // block_e))
    return dict(BLOCK_T=block_t, num_warps=4)


def configs() -> list:
    out = []
    for block_t in (1, 2, 4, 8, 16, 32):
        for warps in (4, 8):
            out.append(triton.Config({"BLOCK_T": block_t}, num_warps=warps))
    return out


def _prune(configs, named_args, **kwargs):
    block_e = kwargs.get("BLOCK_E") or named_args.get("BLOCK_E")
    keep = [c for c in configs if 256 <= c.kwargs["BLOCK_T"] * block_e <= 8192 or
            (block_e >= 4096 and c.kwargs["BLOCK_T"] == 1)]
    return keep or configs[:1]


_LAUNCH = Launcher(_route_kernel, lambda args, meta: _default_config(args[6], args[7]), configs(),
                   key=("E", "K", "MODE", "WRITE_PROBS"), bucket=("T",), prune=_prune, name="topk")


def route_topk(
    logits_TE: torch.Tensor, mode: int, top_k: int, *, temperature: float = 1.0,
    bias_E: torch.Tensor | None = None, write_probs: bool = True, write_hist: bool = False,
):
    """Launch the fused router: (ids int64 [T,K], weights float32 [T,K], probs float32 [T,E] or None), and
    with write_hist a 4th item: (int32 [ceil(T/BLOCK_T), next_pow2(E)] expert histogram per router block,
    BLOCK_T)."""
    x = logits_TE if logits_TE.stride(-1) == 1 else logits_TE.contiguous()
    T, E = x.shape
    dev = x.device
    ids = empty(T, top_k, dtype=torch.int64, device=dev)
    w = empty(T, top_k, dtype=torch.float32, device=dev)
    probs = empty(T, E, dtype=torch.float32, device=dev) if write_probs else w
    bias = bias_E.detach().float().contiguous() if bias_E is not None else w
    meta = dict(K=top_k, K_PAD=next_pow2(top_k), MODE=mode, HAS_BIAS=bias_E is not None, WRITE_PROBS=write_probs,
                ACCURATE_EXP=not INTERPRET, WRITE_HIST=write_hist, BLOCK_E=next_pow2(E))
    hist = torch.empty(0, dtype=torch.int32, device=dev)  # the same dtypes with or without: one tuning key
    args = (x, bias, ids, w, probs, hist, T, E, x.stride(0), float(temperature))
    if write_hist:  # rows for the config about to run; for every candidate (BLOCK_T >= 1) when it will tune
        cfg = _LAUNCH.known_config(args, meta)
        hist = empty(cdiv(T, cfg["BLOCK_T"] if cfg else 1), next_pow2(E), dtype=torch.int32, device=dev)
        args = args[:5] + (hist,) + args[6:]
    _LAUNCH(lambda c: (cdiv(T, c["BLOCK_T"]),), args, meta)
    out = (ids, w, (probs if write_probs else None))
    if not write_hist:
        return out
    block_t = _LAUNCH.last["config"]["BLOCK_T"]  # what ran last (the tuner's final launch is the best config)
    return out + ((hist[: cdiv(T, block_t)], block_t),)
