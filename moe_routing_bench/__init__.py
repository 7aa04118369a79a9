"""moe-routing-bench: Mixture-of-Experts routing primitives, benchmarks and a training harness.

Three layers, imports pointing one way (checked by tests/test_architecture.py):
- `routing`: routers, plan, dispatch, metrics, layer, backends (torch | compile | triton kernels);
- `harness`: workloads, timing, cases, records, deadline, roofline, the `moe-bench` commands;
- `suite`: the result store and exporters, dashboard publishing, the regression gate.

This module is the public API; `benchmarks/` and `train/` use nothing else. Importing it loads
torch, never triton or matplotlib.
"""
from .harness.cases import SHAPES, STAGES, Case, bench_stages, main_shape, make_inputs, stage_callables
from .harness.seed_names import SEED_BACKEND_NAMES, SEED_FLAG_ALIASES
from .harness.deadline import Deadline
from .harness.records import append_jsonl, atomic_target, environment, read_jsonl, write_atomic
from .harness.timing import Timing, copy_bandwidth, matmul_flops, measure, stable_cpu_allocator
from .routing import expert_parallel, metrics
from .routing.backends import BACKENDS, Backend, available_backends, backend_unavailable_reason, get_backend
from .routing.dispatch import combine, pack
from .routing.expert_parallel import (ExpertParallelGroups, ExpertParallelMoELayer, expert_parallel_groups, moe_layer,
                                      shard_experts)
from .routing.layer import MoEAux, MoEConfig, MoELayer
from .routing.plan import Plan, build_plan
from .routing.routers import (STRATEGIES, Routing, balance_loss, canonical_strategy, capacity, route,
                              update_aux_free_bias, z_loss)
from .routing.validation import ConfigError, parse_dtype
# the older tool's semantics, factor by factor (issue 14)
from .routing.routers import (SEED_FACTORS, check_seed_semantics, seed_balance_loss, seed_factors_changing,
                              seed_route_factor)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "SEED_BACKEND_NAMES", "SEED_FACTORS", "SEED_FLAG_ALIASES", "SHAPES", "STAGES", "STRATEGIES",
    "Backend", "Case", "ConfigError", "Deadline", "ExpertParallelGroups", "ExpertParallelMoELayer", "MoEAux",
    "MoEConfig", "MoELayer", "Plan", "Routing", "Timing", "append_jsonl", "atomic_target", "available_backends",
    "backend_unavailable_reason", "balance_loss", "bench_stages", "build_plan", "canonical_strategy", "capacity",
    "check_seed_semantics", "combine", "copy_bandwidth", "environment", "expert_parallel",
    "expert_parallel_groups", "get_backend", "main_shape", "make_inputs", "matmul_flops", "measure", "metrics",
    "moe_layer", "pack", "parse_dtype", "read_jsonl", "route", "seed_balance_loss", "seed_factors_changing",
    "seed_route_factor", "shard_experts", "stable_cpu_allocator", "stage_callables", "update_aux_free_bias",
    "write_atomic", "z_loss",
]
