"""Backend registry: name -> the four routing primitives, all computing the same functions.

| backend   | what it is                                                                 |
|-----------|----------------------------------------------------------------------------|
| `torch`   | the readable reference (`routers`, `plan`, `dispatch`) and the test oracle |
| `compile` | torch.compile of each reference primitive (one compiled region per op)     |
| `triton`  | fused kernels from `kernels/` (the interpreter on machines without a GPU)  |

Primitives: route(logits_TE, strategy, top_k, **opts) -> Routing; build_plan(routing, **opts) -> Plan;
pack(x_TH, plan) -> x_RH; combine(y_RH, plan) -> out_TH (see each module for semantics).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Callable

import torch

from .. import dispatch, plan, routers
from ..validation import ConfigError
from .base import Backend, use_triton_interpreter_without_gpu

__all__ = ["BACKENDS", "Backend", "available_backends", "backend_unavailable_reason", "get_backend"]

# Set before anything (torch.compile's inductor included) imports triton.
use_triton_interpreter_without_gpu()


def _torch_backend() -> Backend:
    return Backend("torch", routers.route, plan.build_plan, dispatch.pack, dispatch.combine)


def _compile_backend() -> Backend:
    compiled_plan = torch.compile(plan.plan_tensors, dynamic=False)
    compiled_route = torch.compile(routers.route, dynamic=False)

    def route(logits_TE, strategy, top_k, *, checked=False, **opts):
        checks = {k: opts[k] for k in ("temperature", "token_ids_T", "bias_E", "seed_semantics") if k in opts}
        routers.check_route_args(logits_TE, strategy, top_k, checked=checked, **checks)  # outside the compiled region
        return compiled_route(logits_TE, strategy, top_k, **opts)

    return Backend(
        "compile",
        route,
        functools.partial(plan.build_plan, impl=compiled_plan),
        torch.compile(dispatch.pack, dynamic=False),
        torch.compile(dispatch.combine, dynamic=False),
    )


def _triton_backend() -> Backend:
    # Imported by name, when asked for: the kernels compile on first use and never import this registry.
    return importlib.import_module(f"{__name__}.triton_ops").triton_backend()


_FACTORIES: dict[str, Callable[[], Backend]] = {
    "torch": _torch_backend,
    "compile": _compile_backend,
    "triton": _triton_backend,
}

BACKENDS = tuple(_FACTORIES)


def backend_unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here, or None when it can."""
    if name not in _FACTORIES:
        return f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}"
    if name == "triton" and importlib.util.find_spec("triton") is None:
        # find_spec of a top-level name locates the package without importing it.
        return "triton is not installed"
    return None


def available_backends() -> list[str]:
    return [name for name in BACKENDS if backend_unavailable_reason(name) is None]


@functools.lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    """The backend called `name`; ConfigError for an unknown or unavailable one."""
    reason = backend_unavailable_reason(name)
    if reason is not None:
        raise ConfigError(reason)
    return _FACTORIES[name]()
