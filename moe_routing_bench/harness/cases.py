"""Benchmark cases shared by every entry point (CLI, asv, pytest-benchmark, roofline).

A `Case` fixes shapes, dtype, device, workload and routing options; `make_inputs` builds its
seeded inputs; `stage_callables` returns one zero-argument callable per primitive with all
allocation of inputs done before timing; `bench_stages` times them and returns records.

Stages: `topk` (router: softmax + top-k + weights), `plan`, `route_plan` (the two in sequence, as the
path runs them: the plan reads the router's outputs from cache, right after they are written), `pack`,
`combine`, and `routing_path` (all four in sequence, the number to compare between backends).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from . import workloads
from ..routing import metrics
from ..routing.backends import Backend, get_backend
from ..routing.validation import ConfigError, check_capacity_factor, check_logits, check_positive, check_top_k, parse_dtype
from ..routing.routers import canonical_strategy
from .timing import Timing, measure

STAGES = ("topk", "plan", "route_plan", "pack", "combine", "routing_path")

# The benchmark shapes (DESIGN section 7), one table for the harness, tests and tools.
# benchmarks/common.py keeps its own copy: asv runs it against commits that predate this table.
SHAPES = {
    "cpu": dict(num_tokens=1024, hidden_dim=256, num_experts=16, top_k=2),  # CPU regression signal
    "gpu": dict(num_tokens=16384, hidden_dim=4096, num_experts=128, top_k=2),  # the main GPU case: the targets
    "gpu-wide": dict(num_tokens=4096, hidden_dim=7168, num_experts=256, top_k=8),  # pack/combine >= 90% of copy
    "gpu-small": dict(num_tokens=8192, hidden_dim=1024, num_experts=32, top_k=2),  # launch cost shows
}


def main_shape(device: torch.device | str) -> dict:
    """The shape a quick benchmark uses on `device`: SHAPES['gpu'] on CUDA, SHAPES['cpu'] otherwise."""
    return dict(SHAPES["gpu" if torch.device(device).type == "cuda" else "cpu"])


@dataclass(frozen=True)
class Case:
    num_tokens: int
    hidden_dim: int
    num_experts: int
    top_k: int
    dtype: str = "bfloat16"
    device: str = "cpu"
    workload: str = "uniform"
    seed: int = 17
    strategy: str = "softk"
    capacity_factor: float | None = None
    drop_policy: str = "position"
    layout: str = "ragged"
    renormalize_kept: bool = False
    temperature: float = 1.0

    def validated(self) -> "Case":
        """The case with canonical names and a resolved device; ConfigError for anything invalid,
        a `file:` workload included (its file is loaded and checked)."""
        check_positive(num_tokens=self.num_tokens, hidden_dim=self.hidden_dim)
        check_top_k(self.top_k, self.num_experts)
        check_capacity_factor(self.capacity_factor)
        if not isinstance(self.temperature, (int, float)) or not 0 < self.temperature < float("inf"):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.num_tokens * self.top_k >= 2**31:
            raise ConfigError(f"num_tokens * top_k must be below 2**31 (int32 row indices), "
                              f"got {self.num_tokens} * {self.top_k}")
        parse_dtype(self.dtype)
        spec = workloads.parse_workload(self.workload)
        if spec.name.startswith("file:"):
            workloads.load_recorded_logits(spec.name[len("file:"):], self.num_experts)
        elif spec.name == "hot" and self.num_experts < 2:
            raise ConfigError("the hot workload needs at least 2 experts")
        return replace(self, strategy=canonical_strategy(self.strategy), device=str(resolve_device(self.device)))

    def working_set_bytes(self, ffn_dim: int = 0) -> int:
        """An upper estimate of the memory one backend's routing path needs for this case (inputs,
        router temporaries, packed rows, combine's float32 [T, K, H] gather; with `ffn_dim`, the MoE
        layer's weights, activations and gradients). Used to refuse sizes that cannot fit."""
        T, H, E = self.num_tokens, self.hidden_dim, self.num_experts
        K = E if self.strategy == "expert-choice" else self.top_k
        b = parse_dtype(self.dtype).itemsize
        rows = T * K
        total = (2 * T * H * b + 2 * rows * H * b  # x, out; packed x and y
                 + 2 * rows * H * 4  # combine's float32 gather (reference backend), and its backward
                 + 8 * T * E * 4  # logits, probabilities, top-k keys (int64), softmax temporaries
                 + 16 * rows * 8)  # plan tensors
        if ffn_dim:
            total += 3 * 2 * E * H * ffn_dim * 4 + 4 * rows * ffn_dim * b  # weights + grads + Adam-free; activations
        return total

    def as_record(self) -> dict:
        return asdict(self)


def available_memory_bytes(device: torch.device | str) -> int | None:
    """Free memory on `device` now (GPU: cudaMemGetInfo; CPU: MemAvailable), None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(case: "Case", ffn_dim: int = 0, fraction: float = 0.8) -> None:
    """ConfigError when `case` needs more than `fraction` of the device's free memory."""
    need = case.working_set_bytes(ffn_dim)
    free = available_memory_bytes(case.device)
    if free is not None and need > fraction * free:
        raise ConfigError(f"T={case.num_tokens} H={case.hidden_dim} E={case.num_experts} k={case.top_k} needs about "
                          f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on {case.device}; "
                          f"use smaller sizes")


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when present, else cpu; a clear error for cuda on a machine without one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


@dataclass
class Inputs:
    x_TH: torch.Tensor
    logits_TE: torch.Tensor
    token_ids_T: torch.Tensor


def make_inputs(case: Case) -> Inputs:
    dtype = parse_dtype(case.dtype)
    spec = workloads.parse_workload(case.workload)
    logits_TE = workloads.router_logits(spec, case.num_tokens, case.num_experts, case.top_k, case.seed, case.device)
    check_logits(logits_TE)  # recorded logits may hold NaN/inf: rejected here, outside any timed region
    return Inputs(
        workloads.hidden_states(case.num_tokens, case.hidden_dim, dtype, case.seed, case.device),
        logits_TE,
        workloads.token_ids(case.num_tokens, case.seed, device=case.device),
    )


def stage_callables(backend: Backend, case: Case, inputs: Inputs) -> dict[str, Callable[[], object]]:
    """Callables per stage; each later stage consumes the previous stage's output computed once here,
    in checked mode (values validated, outside any timed region); the timed callables are unchecked."""
    route_kw = dict(token_ids_T=inputs.token_ids_T, temperature=case.temperature)
    plan_kw = dict(capacity_factor=case.capacity_factor, drop_policy=case.drop_policy,
                   layout=case.layout, renormalize_kept=case.renormalize_kept)

    def topk():
        return backend.route(inputs.logits_TE, case.strategy, case.top_k, **route_kw)

    routing = backend.route(inputs.logits_TE, case.strategy, case.top_k, checked=True, **route_kw)

    def plan():
        return backend.build_plan(routing, **plan_kw)

    plan_ = backend.build_plan(routing, checked=True, **plan_kw)

    def pack():
        return backend.pack(inputs.x_TH, plan_)

    packed = pack()

    def combine():
        return backend.combine(packed, plan_)

    def route_plan():
        return backend.build_plan(backend.route(inputs.logits_TE, case.strategy, case.top_k, **route_kw), **plan_kw)

    def routing_path():
        p = route_plan()
        return backend.combine(backend.pack(inputs.x_TH, p), p)

    return {"topk": topk, "plan": plan, "route_plan": route_plan, "pack": pack, "combine": combine,
            "routing_path": routing_path}


def stage_bytes(stage: str, case: Case) -> int | None:
    """Strict bytes of a stage: (1+K)*H*b per token for pack and for combine, (2+2K)*H*b for the path."""
    b = parse_dtype(case.dtype).itemsize
    op = {"pack": "pack", "combine": "combine", "routing_path": "pack_combine"}.get(stage)
    if op is None:
        return None
    return metrics.bytes_per_token_strict(case.top_k, case.hidden_dim, b, op) * case.num_tokens


CACHE_RESIDENT_PCT = 105.0  # a kernel at the copy ceiling measures 99-101% (H200 combine: 100.8% on 470 MB)


def is_cache_resident(pct_of_copy: float | None) -> bool:
    """Clearly faster than the device's own copy: the data stayed in cache, so the figure is not
    bandwidth (common on CPUs at small sizes). Within a few percent of 100 is the ceiling itself."""
    return pct_of_copy is not None and pct_of_copy > CACHE_RESIDENT_PCT


def stage_record(stage: str, case: Case, backend: str, timing: Timing, copy_bytes_per_s: float | None) -> dict:
    rec = {"name": stage, "backend": backend, **case.as_record(), **timing.as_record("time_")}
    rec.update(median_us=timing.median_s * 1e6, p10_us=timing.p10_s * 1e6, p90_us=timing.p90_s * 1e6)
    rec["avg_ms"] = timing.median_s * 1e3  # the seed's field name; a median here, not a mean
    rec["tokens_per_s"] = case.num_tokens / timing.median_s
    num_bytes = stage_bytes(stage, case)
    if num_bytes is not None:
        bw = metrics.bandwidth(num_bytes, timing.median_s, copy_bytes_per_s)
        rec.update(bytes_per_token_strict=num_bytes // case.num_tokens, bw_GiBps_strict=bw["bw_GiBps"],
                   bw_GBps_strict=bw["bw_GBps"])
        if "pct_of_copy" in bw:
            rec["pct_of_copy"] = bw["pct_of_copy"]
            rec["cache_resident"] = is_cache_resident(bw["pct_of_copy"])
    if copy_bytes_per_s:
        rec["copy_GBps"] = copy_bytes_per_s / 1e9
    return rec


def bench_stages(
    case: Case,
    backend_name: str,
    *,
    stages: tuple[str, ...] = STAGES,
    warmup: int = 10,
    iters: int = 100,
    flush_l2: bool = True,
    cuda_graph: bool = False,
    copy_bytes_per_s: float | None = None,
    inputs: Inputs | None = None,
) -> list[dict]:
    """Time each stage of the routing path for one backend; one record per stage."""
    case = case.validated()
    inputs = inputs or make_inputs(case)
    fns = stage_callables(get_backend(backend_name), case, inputs)
    out = []
    for stage in stages:
        timing = measure(fns[stage], case.device, warmup=warmup, iters=iters, flush_l2=flush_l2, cuda_graph=cuda_graph)
        out.append(stage_record(stage, case, backend_name, timing, copy_bytes_per_s))
    return out
