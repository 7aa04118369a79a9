"""GELU on the H200 at the E8 layer's [32768, 8192] bf16 (issue 16, session 9): the kernels with libdevice erf
(as before this change) against the package's (erfc fit), forward and backward, % of the copy measured here.
JSON lines on stdout."""
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

import moe_routing_bench as mrb
from moe_routing_bench.routing.backends._triton import gelu_kernels as gk


@triton.jit
def _old_fwd(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _old_bwd(g_ptr, x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    d = cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    tl.store(out_ptr + offs, (g * d).to(out_ptr.dtype.element_ty), mask=m)


copy = mrb.copy_bandwidth("cuda")
x = torch.randn(32768, 8192, device="cuda").mul_(2).to(torch.bfloat16)
g = torch.randn_like(x)
out = torch.empty_like(x)
N = x.numel()
fb, bb = 4 * N, 6 * N  # bytes: fwd reads x, writes y; bwd reads g and x, writes dx
print(json.dumps({"copy_GBps": copy / 1e9}))
for block, warps in [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16)]:
    grid = (triton.cdiv(N, block),)
    for name, fn, nbytes in (("old_fwd", lambda: _old_fwd[grid](x, out, N, BLOCK=block, num_warps=warps), fb),
                             ("old_bwd", lambda: _old_bwd[grid](g, x, out, N, BLOCK=block, num_warps=warps), bb),
                             ("new_fwd", lambda: gk._gelu_kernel[grid](x, out, N, BLOCK=block, num_warps=warps), fb),
                             ("new_bwd", lambda: gk._gelu_bwd_kernel[grid](g, x, out, N, BLOCK=block, num_warps=warps), bb)):
        ms = do_bench(fn, warmup=5, rep=40)
        print(json.dumps({"kernel": name, "BLOCK": block, "warps": warps, "us": ms * 1e3,
                          "pct_of_copy": 100 * nbytes / (ms * 1e-3) / copy}), flush=True)
ref = torch.nn.functional.gelu(x.float())
new = gk.gelu(x).float()
print(json.dumps({"max_abs_diff_vs_fp32_torch": (new - ref).abs().max().item(),
                  "bf16_mismatches_vs_torch_bf16": int((gk.gelu(x) != torch.nn.functional.gelu(x)).sum().item()),
                  "elements": N}))
