"""Traffic-shaped ceilings on the GPU: a pure 1-read:K-write duplicate (pack without indirection),
a pure write, a 1:1 copy at pack's byte count, each in Triton with several configs (best kept)."""
import json
import torch, triton, triton.language as tl
import moe_routing_bench as mrb

dev = "cuda" if torch.cuda.is_available() else "cpu"
def emit(**kw): print(json.dumps(kw), flush=True)
def t_us(fn, iters=60): return mrb.measure(fn, dev, iters=iters).median_s * 1e6

@triton.jit
def dup(x_ptr, out_ptr, T, H, K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t*K + k] = x[t]: pack's traffic (1 read, K writes per row) with contiguous rows."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t64 = t.to(tl.int64)
    tm = t < T
    for hc in range(0, tl.cdiv(H, BLOCK_H)):
        cols = hc * BLOCK_H + tl.arange(0, BLOCK_H)
        m = tm[:, None] & (cols < H)[None, :]
        v = tl.load(x_ptr + t64[:, None] * H + cols[None, :], mask=m)
        for k in tl.static_range(K):
            tl.store(out_ptr + (t64 * K + k)[:, None] * H + cols[None, :], v, mask=m)

@triton.jit
def fill(out_ptr, N, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + o, tl.zeros([BLOCK], out_ptr.dtype.element_ty), mask=o < N)

@triton.jit
def copy(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + o, tl.load(x_ptr + o, mask=o < N), mask=o < N)

copy_bw = mrb.copy_bandwidth(dev)
emit(what="copy_GBps", value=copy_bw / 1e9, device=torch.cuda.get_device_name() if dev == "cuda" else "cpu")
shapes = [(16384, 4096, 2), (4096, 7168, 8), (8192, 1024, 2)] if dev == "cuda" else [(64, 256, 2)]
for T, H, K in shapes:
    x = torch.randn(T, H, device=dev).to(torch.bfloat16)
    out = torch.empty(T * K, H, dtype=x.dtype, device=dev)
    nbytes = (1 + K) * T * H * 2
    best = None
    for bt, bh, w in [(1, 1024, 4), (1, 2048, 4), (1, 4096, 8), (2, 2048, 4), (4, 1024, 4), (4, 2048, 8), (1, 8192, 16), (8, 1024, 8)]:
        if dev == "cpu" and bh > 256: bh = 256
        fn = lambda: dup[(triton.cdiv(T, bt),)](x, out, T, H, K=K, BLOCK_T=bt, BLOCK_H=bh, num_warps=w)
        fn()
        assert torch.equal(out.view(T, K, H)[:, -1], x)
        us = t_us(fn)
        if best is None or us < best[0]: best = (us, bt, bh, w)
    emit(what="dup_1r_kw", T=T, H=H, K=K, bytes=nbytes, us=best[0], pct_of_copy=nbytes / best[0] / 1e3 / (copy_bw / 1e9) * 100, cfg=best[1:])
    nw = T * K * H
    wbest = min(t_us(lambda: fill[(triton.cdiv(nw, b),)](out, nw, BLOCK=b, num_warps=w)) for b, w in [(2048, 4), (4096, 8), (8192, 8), (16384, 16)] if dev == "cuda" or b <= 2048)
    emit(what="write_only", bytes=nw * 2, us=wbest, pct_of_copy=nw * 2 / wbest / 1e3 / (copy_bw / 1e9) * 100, torch_zero_us=t_us(lambda: out.zero_()))
    n = nbytes // 4  # bf16 elements in half of pack's bytes: a 1:1 copy of the same total bytes
    a = torch.empty(n, dtype=torch.bfloat16, device=dev); b_ = torch.empty_like(a)
    cbest = min(t_us(lambda: copy[(triton.cdiv(n, bl),)](a, b_, n, BLOCK=bl, num_warps=w)) for bl, w in [(2048, 4), (4096, 8), (8192, 8)] if dev == "cuda" or bl <= 2048)
    emit(what="copy_same_bytes", bytes=2 * n * 2, triton_us=cbest, pct_of_copy=2 * n * 2 / cbest / 1e3 / (copy_bw / 1e9) * 100,
         torch_us=t_us(lambda: b_.copy_(a)))
