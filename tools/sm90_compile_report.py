#!/usr/bin/env python3
"""Compile the Triton kernels for sm_90 (Hopper) on a machine without a GPU and report, for the routing
kernels changed for issue 16 and each grouped-GEMM variant and candidate config: shared memory, wgmma count (the Hopper tensor-core path; mma.sync
would be the slower one), cp.async loads (pipelined operand loads) and ptxas registers / spills.
Costs no device time: run it before a GPU call to catch compile failures and spills.

    PYTHONPATH=. python3 tools/sm90_compile_report.py [--quick]

Uses Triton's own compiler and its bundled ptxas (GPUTarget cuda 90); the kernels are imported with
TRITON_INTERPRET=0 so they are compiled, not interpreted.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # an explicit setting: the package keeps it even without a GPU
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from moe_routing_bench.routing.backends._triton import grouped_gemm_kernels as G  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _divisible(fn, names):
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def _ptxas_usage(ptx: str) -> str:
    if not os.path.exists(PTXAS):
        return "ptxas not found"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (f"regs {regs.group(1) if regs else '?'}, spills {spill.group(1) + '/' + spill.group(2) if spill else '?'}"
            if out.returncode == 0 else f"ptxas failed: {text[-300:]}")


def _report(label, fn, sig, constexprs, divisible, warps, stages):
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=_divisible(fn, divisible)),
                           target=TARGET, options=dict(num_warps=warps, num_stages=stages))
    except Exception as exc:  # noqa: BLE001 - a failed compile is the finding
        print(f"{label}: COMPILE FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return False
    ptx = k.asm["ptx"]
    print(f"{label}: shared {k.metadata.shared // 1024} KB, wgmma {ptx.count('wgmma.mma_async')}, "
          f"mma.sync {ptx.count('mma.sync')}, cp.async {ptx.count('cp.async.cg') + ptx.count('cp.async.ca')}, "
          f"{_ptxas_usage(ptx)}", flush=True)
    return True


def gemm(variant: str, wdt: str, cfg) -> bool:
    gather, scale, act, save_pre, trans_b = {
        "fwd1 gather+gelu": (True, False, 1, True, False), "fwd2": (False, False, 0, False, False),
        "dgrad gather+gate+gelu'": (True, True, 2, False, True), "dX": (False, False, 0, False, True)}[variant]
    unit = "stride_bd" if trans_b else "stride_bn"
    ptrs = {"a_ptr": "*bf16", "b_ptr": f"*{wdt}", "out_ptr": "*bf16", "pre_ptr": "*bf16", "tok_ptr": "*i64",
            "scale_ptr": "*fp32", "kc_ptr": "*i32", "off_ptr": "*i32"}
    ints = ["R", "N", "D", "E", "stride_a", "stride_be", "stride_bd", "stride_bn", "stride_o"]
    cx = dict(GATHER=gather, SCALE=scale, ACT=act, SAVE_PRE=save_pre, DOT_BF16=True, E_PAD=8, EVEN_D=True, **cfg.kwargs)
    sig = {**ptrs, **{n: "i32" for n in ints}, **{n: "constexpr" for n in cx}, unit: "constexpr"}
    div = [*ptrs, "N", "D", "stride_a", "stride_be", "stride_o", "stride_bn" if trans_b else "stride_bd"]
    label = f"grouped_gemm {variant:24s} W {wdt} {_cfg(cfg)}"
    return _report(label, G._grouped_gemm_kernel, sig, {**cx, unit: 1}, div, cfg.num_warps, cfg.num_stages)


def wgrad(variant: str, wdt: str, cfg) -> bool:
    gp, gq, sq = {"dW2 = h^T (gate*go[tok])": (False, True, True), "dW1 = x[tok]^T dA": (True, False, False)}[variant]
    ptrs = {"p_ptr": "*bf16", "q_ptr": "*bf16", "out_ptr": f"*{wdt}", "tok_ptr": "*i64", "scale_ptr": "*fp32",
            "kc_ptr": "*i32", "off_ptr": "*i32"}
    ints = ["M", "N", "E", "stride_p", "stride_q", "stride_oe", "stride_om"]
    cx = dict(GATHER_P=gp, GATHER_Q=gq, SCALE_Q=sq, DOT_BF16=True, **cfg.kwargs)
    sig = {**ptrs, **{n: "i32" for n in ints}, **{n: "constexpr" for n in cx}}
    label = f"grouped_wgrad {variant:23s} dW {wdt} {_cfg(cfg)}"
    return _report(label, G._grouped_wgrad_kernel, sig, cx, [*ptrs, "M", "N", "stride_p", "stride_q", "stride_oe",
                                                             "stride_om"], cfg.num_warps, cfg.num_stages)


def generic(label: str, fn, pointers: dict, constexprs: dict, floats=(), warps=4, stages=3) -> bool:
    """Compile any kernel: pointer args typed by `pointers`, `constexprs` fixed, the rest i32 (fp32 for
    `floats`), every pointer and int assumed 16-divisible except unit strides."""
    sig = {}
    for n in fn.arg_names:
        sig[n] = "constexpr" if n in constexprs else pointers.get(n, "fp32" if n in floats else "i32")
    div = [n for n in fn.arg_names if n in pointers]
    return _report(label, fn, sig, constexprs, div, warps, stages)


def routing_kernels() -> bool:
    """The routing kernels with what changed for issue 16: the router's histogram, the plan's RATIO
    (router-block histogram rows), the shared zero-fill helper in pack and combine's backward."""
    from moe_routing_bench.routing.backends._triton import combine_kernels as kc
    from moe_routing_bench.routing.backends._triton import pack_kernels as kp
    from moe_routing_bench.routing.backends._triton import plan_kernels as kpl
    from moe_routing_bench.routing.backends._triton import topk_kernels as kt

    ok = True
    for K, E, bt in ((2, 128, 8), (8, 256, 2)):
        ok &= generic(f"route softk+hist K{K} E{E} BLOCK_T {bt}", kt._route_kernel,
                      {"x_ptr": "*fp32", "bias_ptr": "*fp32", "ids_ptr": "*i64", "w_ptr": "*fp32", "probs_ptr": "*fp32",
                       "hist_ptr": "*i32"},
                      dict(K=K, K_PAD=K, MODE=2, HAS_BIAS=False, WRITE_PROBS=True, ACCURATE_EXP=True, WRITE_HIST=True,
                           BLOCK_T=bt, BLOCK_E=E), floats=("temperature",))
    for scanned in (False, True):
        ok &= generic(f"plan rank RATIO 16 SCANNED {scanned}", kpl._rank_kernel,
                      {n: "*i32" for n in kpl._rank_kernel.arg_names if n.endswith("_ptr")} |
                      {"ids_ptr": "*i64", "w_ptr": "*fp32", "row_ptr": "*i64", "tok_ptr": "*i64", "gate_ptr": "*fp32",
                       "kept_ptr": "*u8", "valid_ptr": "*i64"},
                      dict(K=2, K_PAD=2, HAS_VALID=False, HAS_CAP=False, PADDED=False, RENORM=False, NUM_BINS=128,
                           SCANNED=scanned, RATIO=16, BLOCK_T=128, CH=32, ROWS_PER_PROG=256, BLOCK_NB=32))
    ok &= generic("pack zero-fill 2x4096 w16", kp._pack_kernel,
                  {"x_ptr": "*bf16", "row_ptr": "*i64", "gate_ptr": "*i64", "tok_ptr": "*i64", "out_ptr": "*bf16"},
                  dict(K=2, SCALE=False, ZERO_FILL=True, BLOCK_T=2, BLOCK_H=4096), warps=16)
    ok &= generic("combine backward zero-fill 1x4096 w8", kc._combine_bwd_kernel,
                  {"go_ptr": "*bf16", "y_ptr": "*bf16", "row_ptr": "*i64", "gate_ptr": "*fp32", "tok_ptr": "*i64",
                   "gy_ptr": "*bf16", "gg_ptr": "*fp32"},
                  dict(K=2, K_PAD=2, NEED_GY=True, NEED_GG=True, ZERO_FILL=True, BLOCK_T=1, BLOCK_H=4096), warps=8)
    return ok


def _cfg(c) -> str:
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_D']} w{c.num_warps} s{c.num_stages}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first two configs only")
    args = ap.parse_args()
    configs = G.gemm_configs()[: 2 if args.quick else None]
    ok = routing_kernels()
    for wdt in ("bf16", "fp32"):
        for cfg in configs:
            for v in ("fwd1 gather+gelu", "fwd2", "dgrad gather+gate+gelu'", "dX"):
                ok &= gemm(v, wdt, cfg)
            for v in ("dW2 = h^T (gate*go[tok])", "dW1 = x[tok]^T dA"):
                ok &= wgrad(v, wdt, cfg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
