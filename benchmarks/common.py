"""Shared parameters and set-up of the asv suites (DESIGN sections 5-7).

The suites are thin: each class times one operation, and its `setup` builds the operation with the
public API (`import moe_routing_bench as mrb`: Case, make_inputs, stage_callables, measure): the
callables the CLI and the pytest-benchmark fixtures time, so a number means the same thing
everywhere. asv takes benchmarks/ from the working tree for every commit it measures: `api()` is
the one place that adapts to commits from before the public API (old module paths).

Methods by device (the device comes from the `shape` parameter):
  time_*     CPU shapes: asv's timer (perf_counter), one torch thread (regressions, not claims)
  peakmem_*  CPU shapes: peak resident memory of the process
  track_*_us GPU shapes: `mrb.measure` (CUDA events, L2 flushed, warm-up), the median in
             microseconds, as the CLI reports it (lower is better). Not discovered at all on a
             machine without a GPU (no process is started for them there); the project's asv
             plugin keeps their entries in benchmarks.json.
A method never runs for the other device's shapes (`skip_params`, decided before torch is imported).

The parameter lists are the same on every machine (the store is shared and asv maps each result
onto the lists in benchmarks.json). The first values are the main configuration: asv's first view
of a benchmark draws the first values of each parameter (up to 8 lines), so shapes start with
DESIGN's main GPU shape, then the main CPU shape. `shape` bundles tokens, hidden size, experts and
top-k (T-H-E-k): asv starts one process per parameter combination, and a free product would be
mostly meaningless combinations.

Nothing here touches CUDA at import time (asv's launcher imports these modules in every benchmark
process or in its fork server, whose children must initialise CUDA themselves). torch is imported
here (and triton), so that the fork server imports them once for all its children. MOE_BENCH_ASV_SUBSET=main
skips (cheaply, before any set-up) every GPU combination but the main shape with the uniform
workload, and MOE_BENCH_ASV_BACKENDS=torch,triton skips every other backend: the per-commit GPU history
within a small budget (on an H200 a cold compile-backend process costs 10-20 s, a torch one ~1 s). Every class pins `version`, so its history
survives edits of its source (bump it when the meaning of a number changes).
"""
from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

try:  # preloaded by asv's fork server: its children start with these imported (no CUDA touched)
    import torch  # noqa: F401
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except ImportError:  # discovery in an environment without torch (or triton) still lists the suites
    pass

BACKENDS = ["torch", "compile", "triton"]
CPU_BACKENDS = {"torch"}  # compile: compile time dominates on CPU; triton: the interpreter on CPU
WORKLOADS = ["uniform", "zipf", "hot"]
DTYPE = "bfloat16"
SEED = 17

# label -> (tokens, hidden, experts, top_k, device)
# These shapes also live in moe_routing_bench.harness (gate, CLI defaults); asv needs its own copy
# because it measures old commits with this file, and the labels are history keys.
SHAPES = {
    "T16384-H4096-E128-k2": (16384, 4096, 128, 2, "cuda"),  # DESIGN section 7: the targets
    "T1024-H256-E16-k2": (1024, 256, 16, 2, "cpu"),
    "T4096-H7168-E256-k8": (4096, 7168, 256, 8, "cuda"),  # pack/combine >= 90% of copy
    "T8192-H1024-E32-k2": (8192, 1024, 32, 2, "cuda"),  # small kernels: launch cost shows
    "T1024-H256-E64-k8": (1024, 256, 64, 8, "cpu"),
}
STAGE_SHAPES = list(SHAPES)  # pack, combine: DESIGN's three GPU shapes and two CPU shapes
ROUTER_SHAPES = ["T16384-H4096-E128-k2", "T1024-H256-E16-k2", "T1024-H256-E64-k8"]  # top-k, plan
MAIN_SHAPES = ["T16384-H4096-E128-k2", "T1024-H256-E16-k2"]  # one per device
# MoE layer (the seed's bench_moe_layer sizes on GPU), expert hidden = 4 * H
LAYER_SHAPES = {
    "T8192-H1024-E32-k2": (8192, 1024, 32, 2, "cuda"),
    "T512-H128-E8-k2": (512, 128, 8, 2, "cpu"),
}


def device_of(shape: str) -> str:
    return (SHAPES.get(shape) or LAYER_SHAPES[shape])[4]


def skip_unless(cls, method, keep) -> None:
    """Attach asv's `skip_params` (what @skip_for_params does) for combinations where not keep(p)."""
    combos = itertools.product(*cls.params) if cls.params else []
    skip = [c for c in combos if not keep(dict(zip(cls.param_names, c)))]
    func = getattr(cls, method)
    func.skip_params = skip


def split_by_device(cls):
    """Class decorator: time_*/peakmem_* run on CPU shapes with CPU backends, track_*_us on GPU
    shapes; without a GPU the GPU methods are not discovered (asv_runner's `skip_benchmark`)."""
    gpu = _gpu_present()
    for name in dir(cls):
        if name.startswith(("time_", "peakmem_")):
            skip_unless(cls, name, lambda p: device_of(p["shape"]) == "cpu" and p["backend"] in CPU_BACKENDS)
        elif name.startswith("track_") and (name.endswith("_us") or name.endswith("_mib")):
            skip_unless(cls, name, lambda p: device_of(p["shape"]) == "cuda" and _in_subset(cls, p))
            if not gpu:
                getattr(cls, name).skip_benchmark = True
    return cls


def _in_subset(cls, p: dict) -> bool:
    """With MOE_BENCH_ASV_SUBSET=main: only the class's first GPU shape, uniform workload; with
    MOE_BENCH_ASV_BACKENDS=torch,triton (say): only those backends."""
    backends = os.environ.get("MOE_BENCH_ASV_BACKENDS")
    if backends and p["backend"] not in backends.split(","):
        return False
    if os.environ.get("MOE_BENCH_ASV_SUBSET") != "main":
        return True
    first_gpu = next(s for s in cls.params[cls.param_names.index("shape")] if device_of(s) == "cuda")
    return p["shape"] == first_gpu and p.get("workload", "uniform") == "uniform"


def _gpu_present() -> bool:
    """A cheap check that needs no torch import: the NVIDIA driver is loaded.
    MOE_BENCH_ASV_GPU=1 lists the GPU methods anyway (to refresh their benchmarks.json entries)."""
    if os.environ.get("MOE_BENCH_ASV_GPU") == "1":
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))


def prepare(device: str, backend: str):
    """Skip (NotImplementedError) what cannot run here; return the backend object."""
    if device == "cuda" and not _gpu_present():
        raise NotImplementedError("GPU shape on a machine without a GPU")
    import torch

    mrb = api()
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("GPU shape, but torch sees no CUDA device")
    reason = mrb.backend_unavailable_reason(backend)
    if reason is not None:
        raise NotImplementedError(reason)
    if device == "cpu":
        torch.set_num_threads(1)  # 2 threads on 2 vCPUs gave bimodal samples
        stable_cpu_allocator()
    return mrb.get_backend(backend)


def api() -> SimpleNamespace:
    """What the suites use of moe_routing_bench, in any commit: the public API where the package
    has one (`import moe_routing_bench as mrb`), else the module paths of the commits before it
    (moe_routing_bench.bench, .backends, .layer with positional MoELayer arguments, .timing)."""
    import moe_routing_bench as mrb

    if hasattr(mrb, "stage_callables"):
        if hasattr(mrb, "MoEConfig"):
            def moe_layer(hidden, ffn, experts, top_k, **kw):
                return mrb.MoELayer(mrb.MoEConfig(hidden, ffn, experts, top_k, **kw))
        else:  # the first public API (65bd092) took the layer's arguments directly
            moe_layer = mrb.MoELayer
        return SimpleNamespace(
            Case=mrb.Case, make_inputs=mrb.make_inputs, stage_callables=mrb.stage_callables,
            get_backend=mrb.get_backend, backend_unavailable_reason=mrb.backend_unavailable_reason,
            measure=mrb.measure, drop_rates=mrb.metrics.drop_rates, moe_layer=moe_layer)
    from moe_routing_bench import backends, bench, layer, metrics, timing

    return SimpleNamespace(
        Case=bench.Case, make_inputs=bench.make_inputs, stage_callables=bench.stage_callables,
        get_backend=backends.get_backend, backend_unavailable_reason=backends.backend_unavailable_reason,
        measure=timing.measure, drop_rates=metrics.drop_rates, moe_layer=layer.MoELayer)


def stable_cpu_allocator() -> None:
    """Fixed glibc mmap/trim thresholds: otherwise ~1 process in 10 pays page faults on every
    large tensor for its whole life (5x slower CPU combine). A copy of
    moe_routing_bench.suite.gate.stable_cpu_allocator: old commits do not have that module."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 28), libc.mallopt(-1, 1 << 28)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def stage_setup(stage: str, backend: str, shape: str, workload: str = "uniform", **case_options):
    """(case, zero-argument callable) for one stage of the routing path, inputs built already."""
    tokens, hidden, experts, top_k, device = SHAPES[shape]
    impl = prepare(device, backend)
    bench = api()
    case = bench.Case(tokens, hidden, experts, top_k, dtype=DTYPE, device=device, workload=workload,
                      seed=SEED, **case_options).validated()
    inputs = bench.make_inputs(case)
    return case, bench.stage_callables(impl, case, inputs)[stage]


def gpu_median_us(fn, device: str = "cuda") -> float:
    """The CLI's measurement: CUDA events, 10 warm-up calls, 100 repetitions, L2 flushed."""
    return api().measure(fn, device, warmup=10, iters=100, flush_l2=True).median_s * 1e6


class StageBenchmark:
    """Base of the per-stage suites; subclasses set `stage` and name their methods."""

    stage = ""
    param_names = ["backend", "shape", "workload"]
    params = [BACKENDS, STAGE_SHAPES, ["uniform"]]
    timeout = 600  # spawn: each process imports torch, creates a CUDA context, maybe compiles
    warmup_time = 0.2
    repeat = (5, 20, 10.0)

    def setup(self, backend, shape, workload):
        self.case, self.fn = stage_setup(self.stage, backend, shape, workload)

    def _gpu_us(self) -> float:
        return gpu_median_us(self.fn, self.case.device)
