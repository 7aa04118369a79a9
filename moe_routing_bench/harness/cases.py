"""Benchmark cases shared by every entry point (CLI, asv, pytest-benchmark, roofline).

A `Case` fixes shapes, dtype, device, workload and routing options; `make_inputs` builds its
seeded inputs; `stage_callables` returns one zero-argument callable per primitive with all
allocation of inputs done before timing; `bench_stages` times them and returns records.

Stages: `topk` (router: softmax + top-k + weights), `plan`, `pack`, `combine`, and
`routing_path` (all four in sequence, the number to compare between backends).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from . import workloads
from ..routing import metrics
from ..routing.backends import Backend, get_backend
from ..routing.validation import ConfigError, check_capacity_factor, check_logits, check_positive, check_top_k, parse_dtype
from ..routing.routers import canonical_strategy
from .timing import Timing, measure

STAGES = ("topk", "plan", "pack", "combine", "routing_path")


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

    def validated(self) -> "Case":
        check_positive(num_tokens=self.num_tokens, hidden_dim=self.hidden_dim)
        check_top_k(self.top_k, self.num_experts)
        check_capacity_factor(self.capacity_factor)
        parse_dtype(self.dtype)
        workloads.parse_workload(self.workload)
        return replace(self, strategy=canonical_strategy(self.strategy), device=str(resolve_device(self.device)))

    def as_record(self) -> dict:
        return asdict(self)


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
    """Callables per stage; each later stage consumes the previous stage's output computed once here."""
    route_kw = dict(token_ids_T=inputs.token_ids_T)
    plan_kw = dict(capacity_factor=case.capacity_factor, drop_policy=case.drop_policy,
                   layout=case.layout, renormalize_kept=case.renormalize_kept)

    def topk():
        return backend.route(inputs.logits_TE, case.strategy, case.top_k, **route_kw)

    routing = topk()

    def plan():
        return backend.build_plan(routing, **plan_kw)

    plan_ = plan()

    def pack():
        return backend.pack(inputs.x_TH, plan_)

    packed = pack()

    def combine():
        return backend.combine(packed, plan_)

    def routing_path():
        p = backend.build_plan(backend.route(inputs.logits_TE, case.strategy, case.top_k, **route_kw), **plan_kw)
        return backend.combine(backend.pack(inputs.x_TH, p), p)

    return {"topk": topk, "plan": plan, "pack": pack, "combine": combine, "routing_path": routing_path}


def stage_bytes(stage: str, case: Case) -> int | None:
    """Strict bytes of a stage: (1+K)*H*b per token for pack and for combine, (2+2K)*H*b for the path."""
    b = parse_dtype(case.dtype).itemsize
    op = {"pack": "pack", "combine": "combine", "routing_path": "pack_combine"}.get(stage)
    if op is None:
        return None
    return metrics.bytes_per_token_strict(case.top_k, case.hidden_dim, b, op) * case.num_tokens


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
