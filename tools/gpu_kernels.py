#!/usr/bin/env python3
"""Measure the Triton kernels and the fused MoE layer on one GPU against issue 16's targets, in one run.

    PYTHONPATH=. python3 tools/gpu_kernels.py --out $OUT [--commit SHA] [--budget-s 540]

Correctness is the test suite's, not re-implemented here: step 2 runs tests/test_kernels.py,
tests/test_fused_experts.py and tests/test_router_matmul.py with pytest on this GPU (their `gpu`
cases add the benchmark shapes and force every candidate launch config, so whatever the tuner picks
below was checked). Steps:
1. ceilings measured in this run: device-to-device copy (`copy_bandwidth`) and dense bf16 matmul
   (`matmul_flops`, 8192^3 on random data);
2. pytest on the GPU -> pytest.log;
3. routing stages (top-k, plan, pack, combine, path) with the triton backend, tuned for this device
   (tune cache in $OUT/tune), CUDA events and CUDA-graph replays, at the three design shapes and
   zipf(1.2) / hot at the main one; the torch backend at the main shape for reference;
4. the MoE layer forward + backward (dropless softk, GELU experts, bf16 activations) at
   T16384 H2048 F8192 E8 k2 and T8192 H7168 F2048 E256 k8: the layer's default path (pack, torch
   grouped GEMMs, triton GELU, combine; judged against the targets), the fused gather/scatter GEMM path
   with bf16 weights and with float32 master weights; active FLOPs against the dense rate; routing +
   dispatch share (the router included, the expert MLPs' GEMMs and activation not) from a kernel profile.
   Each layer and a dense matmul right after it are timed after SUSTAIN_S seconds of running, at the
   card's power limit, where training runs (an H200 at 700 W drops from ~1980 to ~1500 MHz within a
   second: run4_4a245b9/power17.jsonl); the targets compare that pair. The dense rate of step 1, a
   short burst at boost clocks, is kept as `pct_of_dense_burst`;
5. records.jsonl (each record names the launch configs that ran: `launch_configs`), roofline.png,
   summary.txt with every target MET / NOT MET (also printed last); tune/ holds the configs chosen.
Sections run most important first (main-shape routing, the default-path layers, the other routing
cases, the fused layers, float32 master weights, torch); one that would start past --budget-s is
skipped and said so; the summary is always written. `--smoke` runs the script itself at tiny sizes
on the CPU interpreter (numbers meaningless) to check it before spending GPU time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

SHAPES = {"main": (16384, 4096, 128, 2), "wide": (4096, 7168, 256, 8), "small": (8192, 1024, 32, 2)}
ROUTING_CASES = [("main", "uniform"), ("main", "zipf"), ("main", "hot"), ("wide", "uniform"), ("small", "uniform")]
LAYER_SHAPES = {"E8": (16384, 2048, 8192, 8, 2), "E256": (8192, 7168, 2048, 256, 8)}  # T, H, F, E, K
LAYER_VARIANTS = [("unfused", torch.bfloat16), ("fused", torch.bfloat16), ("fused", torch.float32)]
DEFAULT_VARIANT = "unfused"  # MoEConfig.fused_experts is False: the path a user's layer runs (checked in main)
SMOKE_SHAPES = {"main": (256, 128, 16, 2), "wide": (64, 256, 32, 8), "small": (128, 64, 8, 2)}
SMOKE_LAYER_SHAPES = {"E8": (128, 64, 128, 8, 2), "E256": (64, 64, 32, 16, 8)}
DEV = "cuda"
ITERS = {"stage": 100, "layer": 10}  # timed repetitions (the smoke run takes 2 and 1)
SUSTAIN_S = 3.0  # seconds of layer (or dense matmul) before its timed repetitions: the power-limited state
# Issue 16's H200 run (configs tuned on the H100, `moe-bench roofline`, CUDA events): the "before" column.
BEFORE_US = {"main": {"topk": 9.9, "plan": 20.3, "pack": 105.0, "combine": 95.9, "routing_path": 231.4},
             "wide": {"topk": 13.9, "plan": 18.5, "pack": 143.8, "combine": 126.0, "routing_path": 305.4},
             "small": {"topk": 5.2, "plan": 14.7, "pack": 15.3, "combine": 15.4, "routing_path": 44.0}}
BEFORE_LAYER_PCT = {"E8": 69.8, "E256": 37.4}
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


class Run:
    """Output folder, common metadata, the time budget and the records written so far."""

    def __init__(self, out: str, common: dict, budget_s: float):
        self.out, self.common, self.budget_s = out, common, budget_s
        self.records: list[dict] = []
        self.notes: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.time() - T0)

    def emit(self, rec: dict) -> dict:
        from moe_routing_bench.harness.records import append_jsonl

        rec = {**self.common, **rec}
        self.records.append(rec)
        append_jsonl(os.path.join(self.out, "records.jsonl"), [rec])
        return rec

    def section(self, name: str, fn, need_s: float = 0.0):
        if self.left() < need_s:
            self.notes.append(f"skipped {name}: {self.left():.0f} s of budget left, needs ~{need_s:.0f}")
            log(self.notes[-1])
            return None
        try:
            return fn()
        except Exception as exc:  # a failed section is reported; the others still run
            self.notes.append(f"{name} failed: {exc!r}")
            log(self.notes[-1], traceback.format_exc()[-3000:])
            return None


# ----------------------------------------------------------------------------- 2. tests on the GPU

def run_pytest(run: Run) -> None:
    files = ["tests/test_kernels.py", "tests/test_fused_experts.py", "tests/test_router_matmul.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *files]
    try:
        import xdist  # noqa: F401

        cmd += ["-n", "8"]  # the compiles (most of the time) run in parallel on the 16 cores
    except ImportError:
        pass
    timeout = max(60.0, min(200.0, run.left() - 320))  # leave ~320 s for the measurements
    log("pytest on the GPU:", " ".join(cmd[1:]), f"(timeout {timeout:.0f} s)")
    env = {**os.environ, "PYTHONPATH": ROOT}
    t = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text, rc = text + f"\nTIMEOUT after {timeout:.0f} s", "timeout"
    with open(os.path.join(run.out, "pytest.log"), "w") as f:
        f.write(text)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)", text)}
    rec = run.emit({"name": "gpu_tests", "files": files, "returncode": rc, "wall_s": time.time() - t, **counts})
    log("pytest:", {k: rec.get(k) for k in ("returncode", "passed", "failed", "skipped", "error", "errors")},
        "\n" + "\n".join(text.strip().splitlines()[-15:]))


# ----------------------------------------------------------------------------- 3. routing stages

def routing(run: Run, copy: float, shape: str, workload: str, backend: str = "triton", graphs: bool = True) -> None:
    import moe_routing_bench as mrb
    from moe_routing_bench.routing.backends._triton import launch

    T, H, E, K = SHAPES[shape]
    case = mrb.Case(T, H, E, K, device=DEV, workload=workload).validated()
    inputs = mrb.make_inputs(case)
    for graph in ((False, True) if graphs else (False,)):
        recs = mrb.bench_stages(case, backend, cuda_graph=graph, copy_bytes_per_s=copy, inputs=inputs,
                                iters=ITERS["stage"], warmup=min(10, ITERS["stage"]))
        used = launch.configs_used() if backend == "triton" else {}
        for r in recs:
            run.emit({**r, "shape": shape, "graph": graph, "launch_configs": used})
        log(f"{backend:7s} {shape:5s} {workload:7s} {'graph ' if graph else 'events'}: " + ", ".join(
            f"{r['name']} {r['time_median_s'] * 1e6:.1f}us" + (f" {r['pct_of_copy']:.1f}%" if 'pct_of_copy' in r else "")
            for r in recs))


# ----------------------------------------------------------------------------- 4. MoE layer

def kernel_split(fn, is_gemm, iters: int = 2) -> dict:
    """Device time per kernel class over `iters` calls of fn (torch.profiler): expert GEMMs vs the rest."""
    from torch.profiler import ProfilerActivity, profile

    if DEV != "cuda":  # the interpreter's kernels are no device kernels: nothing to split
        return {"expert_gemm_us": 0.0, "other_us": 0.0, "other_share": 0.0, "other_top": []}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    gemm = other = 0.0
    top = []
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.self_device_time_total / iters
        if is_gemm(e.key):
            gemm += us
        else:
            other += us
            top.append((us, e.key[:80]))
    return {"expert_gemm_us": gemm, "other_us": other, "other_share": other / max(gemm + other, 1e-9),
            "other_top": [f"{us:.0f}us {k}" for us, k in sorted(top, reverse=True)[:8]]}


def layer(run: Run, dense: float, name: str, variant: str, weight_dtype: torch.dtype) -> None:
    import moe_routing_bench as mrb
    from moe_routing_bench.routing.backends._triton import launch

    T, H, F, E, K = LAYER_SHAPES[name]
    torch.manual_seed(0)
    with torch.device(DEV):
        lay = mrb.MoELayer(mrb.MoEConfig(H, F, E, K, strategy="softk", backend="triton", capacity_factor=None,
                                         fused_experts=variant == "fused"))  # unfused: pack, grouped_mm, combine
    lay.to(weight_dtype)
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(T, H, device=DEV, generator=g).to(torch.bfloat16).requires_grad_()
    go = torch.randn(T, H, device=DEV, generator=g).to(torch.bfloat16)
    ids = torch.arange(T, device=DEV)

    def fwd_bwd():
        lay.zero_grad(set_to_none=True)  # no gradient accumulation kernels in the timed region
        x.grad = None
        out, aux = lay(x, ids)
        torch.autograd.backward([out, aux.balance_loss], [go, torch.ones_like(aux.balance_loss)])

    def fwd():
        with torch.no_grad():
            lay(x, ids)

    t_tune = time.time()
    fwd_bwd()  # tunes the kernels of this shape (first call)
    if DEV == "cuda":
        torch.cuda.synchronize()
    tune_s = time.time() - t_tune
    fb = mrb.measure(fwd_bwd, DEV, warmup=2, iters=ITERS["layer"], flush_l2=False, warmup_s=SUSTAIN_S)
    dense_sustained = mrb.matmul_flops(DEV, torch.bfloat16, warmup_s=SUSTAIN_S)
    f = mrb.measure(fwd, DEV, warmup=2, iters=ITERS["layer"], flush_l2=False)
    # the expert MLPs' kernels against the rest (routing, dispatch, the router); the unfused path's
    # activation is the experts' work, not dispatch
    is_gemm = ((lambda k: "_grouped_gemm_kernel" in k or "_grouped_wgrad_kernel" in k) if variant == "fused"
               else (lambda k: "grouped" in k.lower() or ("gemm" in k.lower() and "splitk" not in k.lower())
                     or "gelu" in k.lower()))
    split = kernel_split(fwd_bwd, is_gemm)
    flops = 3 * 2 * 2 * T * K * H * F  # fwd: two GEMMs over T*K rows (dropless); backward twice that
    rec = run.emit({
        "name": "moe_layer_fwd_bwd", "layer_shape": name, "variant": variant,
        "weight_dtype": str(weight_dtype).replace("torch.", ""), "activation_dtype": "bfloat16",
        "num_tokens": T, "hidden_dim": H, "ffn_dim": F, "num_experts": E, "top_k": K, "strategy": "softk",
        "capacity_factor": None, **fb.as_record("fwd_bwd_"), **f.as_record("fwd_"),
        "tflops_fwd_bwd": flops / fb.median_s / 1e12, "sustain_s": SUSTAIN_S,
        "dense_mm_tflops": dense_sustained / 1e12, "pct_of_dense": 100 * flops / fb.median_s / dense_sustained,
        "dense_mm_tflops_burst": dense / 1e12, "pct_of_dense_burst": 100 * flops / fb.median_s / dense,
        "routing_dispatch_share": split["other_share"], **split,
        "first_call_s": tune_s, "launch_configs": launch.configs_used() if variant == "fused" else {},
    })
    log(f"layer {name} {variant} w={rec['weight_dtype']}: fwd+bwd {fb.median_s * 1e3:.2f} ms, "
        f"{rec['tflops_fwd_bwd']:.0f} TFLOP/s = {rec['pct_of_dense']:.1f}% of dense at the power limit "
        f"({rec['dense_mm_tflops']:.0f}; {rec['pct_of_dense_burst']:.1f}% of the burst rate); "
        f"fwd {f.median_s * 1e3:.2f} ms; "
        f"non-GEMM share {100 * split['other_share']:.1f}% ({split['other_top'][:4]}); first call {tune_s:.1f} s")
    del lay, x, go
    if DEV == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 5. targets

def find(records, **kw):
    for r in records:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def targets(run: Run, copy: float) -> list[tuple[str, str, str]]:
    """(target, measured, MET / NOT MET / NO DATA) rows of issue 16."""
    R = run.records
    rows = []

    def row(label, value, ok):
        rows.append((label, value, "NO DATA" if ok is None else "MET" if ok else "NOT MET"))

    def stage(shape, st, workload="uniform", graph=False):
        return find(R, backend="triton", shape=shape, name=st, workload=workload, graph=graph)

    tests = find(R, name="gpu_tests")
    row("kernel tests pass on this GPU", f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
        f"{tests.get('error', 0) + tests.get('errors', 0)} errors, rc {tests['returncode']}" if tests else "-",
        None if not tests else tests["returncode"] == 0)
    for shape, goals in (("main", {"pack": 95, "combine": 97}), ("wide", {"pack": 95, "combine": 95}),
                         ("small", {"pack": 85, "combine": 85})):
        T, H, E, K = SHAPES[shape]
        for st, goal in goals.items():
            r = stage(shape, st)
            row(f"T{T} H{H} E{E} k{K} {st} >= {goal}% of copy",
                f"{r['pct_of_copy']:.1f}% ({r['time_median_s'] * 1e6:.1f} us)" if r else "-",
                None if not r else r["pct_of_copy"] >= goal)
    # judged as the path runs them (route_plan: the plan reads the router's fresh outputs); the sum of the
    # two timed apart, each after its own L2 flush and graph launch, is shown beside it
    rp, rpe = stage("main", "route_plan", graph=True), stage("main", "route_plan")
    tk, pl = stage("main", "topk", graph=True), stage("main", "plan", graph=True)
    if rp:
        us = rp["time_median_s"] * 1e6
        ev = f"; events {rpe['time_median_s'] * 1e6:.1f}" if rpe else ""
        apart = (f"; timed apart {(tk['time_median_s'] + pl['time_median_s']) * 1e6:.1f} "
                 f"({tk['time_median_s'] * 1e6:.1f} + {pl['time_median_s'] * 1e6:.1f})" if tk and pl else "")
        row("main top-k + plan <= 20 us (in sequence, graph replay)", f"{us:.1f} us{ev}{apart}", us <= 20)
    else:
        row("main top-k + plan <= 20 us (in sequence, graph replay)", "-", None)
    path, pathg, pk = stage("main", "routing_path"), stage("main", "routing_path", graph=True), stage("main", "pack")
    if path and pk:
        floor = 2 * pk["bytes_per_token_strict"] * pk["num_tokens"] / copy
        ratio = path["time_median_s"] / floor
        g = f"; graph {pathg['time_median_s'] / floor:.3f}x" if pathg else ""
        row("main routing path <= 1.10x memory floor", f"{ratio:.3f}x ({path['time_median_s'] * 1e6:.1f} us vs "
            f"floor {floor * 1e6:.1f} us){g}", ratio <= 1.10)
    else:
        row("main routing path <= 1.10x memory floor", "-", None)
    for wl in ("zipf", "hot"):
        r = stage("main", "routing_path", workload=wl)
        row(f"{wl} path <= 1.1x uniform", f"{r['time_median_s'] / path['time_median_s']:.3f}x" if r and path else "-",
            None if not (r and path) else r["time_median_s"] / path["time_median_s"] <= 1.1)
    for name, goal in (("E8", 75), ("E256", 60)):
        T, H, F, E, K = LAYER_SHAPES[name]
        label = f"layer T{T} H{H} F{F} E{E} k{K}"
        # bf16: the default path is judged, the other shown; float32 master weights: the fused path
        for wd, variant, kind in (("bfloat16", DEFAULT_VARIANT, "target"), ("float32", "fused", "reported")):
            r = find(R, name="moe_layer_fwd_bwd", layer_shape=name, variant=variant, weight_dtype=wd)
            others = [o for o in R if o.get("name") == "moe_layer_fwd_bwd" and o.get("layer_shape") == name
                      and o.get("weight_dtype") == wd and o.get("variant") != variant]
            b = "".join(f"; {o['variant']} {o['pct_of_dense']:.1f}%" for o in others)
            row(f"{label} {wd} weights, {variant} >= {goal}% of dense ({kind})",
                f"{r['pct_of_dense']:.1f}% ({r['tflops_fwd_bwd']:.0f} of {r['dense_mm_tflops']:.0f} TFLOP/s, "
                f"{r['fwd_bwd_median_s'] * 1e3:.2f} ms; {r['pct_of_dense_burst']:.1f}% of the "
                f"burst dense rate){b}"
                if r else "-", None if not r else r["pct_of_dense"] >= goal)
        r = find(R, name="moe_layer_fwd_bwd", layer_shape=name, variant=DEFAULT_VARIANT, weight_dtype="bfloat16")
        row(f"{label} routing + dispatch <= 5% of layer kernel time ({DEFAULT_VARIANT})",
            f"{100 * r['routing_dispatch_share']:.1f}%" if r else "-", None if not r else r["routing_dispatch_share"] <= 0.05)
    return rows


def before_after(run: Run) -> list[str]:
    """Per kernel: issue 16's H200 figure (before) against this run (events, and graph replay)."""
    lines = ["before (issue 16, H100-tuned configs, events) -> after (this run: events / graph replay), us:"]
    for shape, stages in BEFORE_US.items():
        T, H, E, K = SHAPES[shape]
        cells = []
        for st, before in stages.items():
            ev = find(run.records, backend="triton", shape=shape, name=st, workload="uniform", graph=False)
            gr = find(run.records, backend="triton", shape=shape, name=st, workload="uniform", graph=True)
            after = f"{ev['time_median_s'] * 1e6:.1f}" if ev else "-"
            after += f" / {gr['time_median_s'] * 1e6:.1f}" if gr else ""
            cells.append(f"{st} {before} -> {after}")
        lines.append(f"  T{T} H{H} E{E} k{K}: " + "; ".join(cells))
    for name, before in BEFORE_LAYER_PCT.items():
        r = find(run.records, name="moe_layer_fwd_bwd", layer_shape=name, variant=DEFAULT_VARIANT, weight_dtype="bfloat16")
        lines.append(f"  layer {name} bf16 weights, {DEFAULT_VARIANT}: {before}% of dense -> "
                     + (f"{r['pct_of_dense']:.1f}%" if r else "-"))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--commit", default=None, help="commit measured (the device copy has no .git)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip sections that would end past this")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter (checks this script)")
    args = ap.parse_args()
    global DEV, SHAPES, LAYER_SHAPES
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        DEV, SHAPES, LAYER_SHAPES = "cpu", SMOKE_SHAPES, SMOKE_LAYER_SHAPES
        ITERS.update(stage=2, layer=1)
    elif not torch.cuda.is_available():
        print("gpu_kernels: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET") == "1" and not args.smoke:
        print("gpu_kernels: error: never measure under TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    os.environ["MRB_TUNE_CACHE"] = os.path.join(os.path.abspath(args.out), "tune")
    if args.commit:
        os.environ["MOE_BENCH_GIT_COMMIT"] = args.commit
    import moe_routing_bench as mrb

    common = {k: v for k, v in mrb.environment(DEV).items() if k not in ("timestamp",)}
    if DEV == "cuda":
        common["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    run = Run(args.out, common, args.budget_s)
    log("env", common)

    copy = mrb.copy_bandwidth(DEV)
    dense = mrb.matmul_flops(DEV, torch.bfloat16)
    run.emit({"name": "ceilings", "copy_GBps": copy / 1e9, "dense_bf16_tflops": dense / 1e12, "when": "start"})
    log(f"copy ceiling {copy / 1e9:.0f} GB/s, dense bf16 matmul {dense / 1e12:.0f} TFLOP/s")

    if not (args.skip_tests or args.smoke):
        run.section("pytest", lambda: run_pytest(run), need_s=200)
    # most important first: whatever the budget cuts is at the end
    assert mrb.MoEConfig(8, 8, 2, 1).fused_experts == (DEFAULT_VARIANT == "fused")
    plan = [("routing main uniform", lambda: routing(run, copy, "main", "uniform"), 60)]
    plan += [(f"layer {n} {DEFAULT_VARIANT} bfloat16", lambda n=n: layer(run, dense, n, DEFAULT_VARIANT, torch.bfloat16), 40)
             for n in LAYER_SHAPES]
    plan += [(f"routing {sh} {wl}", lambda sh=sh, wl=wl: routing(run, copy, sh, wl), 30)
             for sh, wl in ROUTING_CASES[1:]]
    plan += [(f"layer {n} {v} {str(wd)[6:]}", lambda n=n, v=v, wd=wd: layer(run, dense, n, v, wd), 40)
             for v, wd in LAYER_VARIANTS if (v, wd) != (DEFAULT_VARIANT, torch.bfloat16) for n in LAYER_SHAPES]
    plan += [("routing torch main", lambda: routing(run, copy, "main", "uniform", backend="torch", graphs=False), 20)]
    for name, fn, need in plan:
        run.section(name, fn, need_s=need)
    copy2 = mrb.copy_bandwidth(DEV)
    run.emit({"name": "ceilings", "copy_GBps": copy2 / 1e9, "when": "end"})

    def png():
        from moe_routing_bench.harness.roofline import plot_roofline

        recs = [r for r in run.records if r.get("graph") is False and r.get("workload") == "uniform"]
        plot_roofline(recs, os.path.join(args.out, "roofline.png"))
    run.section("roofline png", png, need_s=-1e9)

    rows = targets(run, copy)
    w = max(len(r[0]) for r in rows)
    lines = [f"{common['device_name']}  torch {common['torch']}  triton {common['triton']}  commit {common['git_commit']}",
             f"copy {copy / 1e9:.0f} GB/s (end {copy2 / 1e9:.0f}), dense bf16 matmul {dense / 1e12:.0f} TFLOP/s", ""]
    lines += before_after(run) + [""]
    lines += [f"{a:<{w}}  {c:<8}  {b}" for a, b, c in rows]
    lines += [""] + [f"note: {n}" for n in run.notes]
    lines.append(f"{sum(r[2] == 'MET' for r in rows)}/{len(rows)} MET; wall {time.time() - T0:.0f} s")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
