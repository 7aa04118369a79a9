"""The `triton` backend: the four routing primitives on the fused kernels of this package.

| primitive    | kernels                                                     | torch reference instead when    |
|--------------|-------------------------------------------------------------|---------------------------------|
| `route`      | `topk._route_kernel` (+ `autograd.RouteFn` under autograd)  | strategy `hash` or `expert-choice` (no fused kernel: they are not a per-token top-k); the older tool's variants (`seed_semantics`); E > 4096 or K > 16 |
| `build_plan` | position policy: `plan._hist_kernel` [+ `_block_scan_kernel`] + `_rank_kernel` (2-3 launches, config tuned per shape on a GPU; the histogram launch is skipped when the fused router wrote one, `FusedRouting`); score policy: `_hist/_scan_kernel`, one stable torch.sort of (expert, -weight) keys (torch fallback), `_score/_gate_kernel` | - |
| `pack`       | `pack._pack_kernel` (+ `autograd.PackFn`)                    | -                               |
| `combine`    | `combine._combine_kernel` (+ `autograd.CombineFn`, backward `_combine_bwd_kernel`) | -          |
| `gelu`       | `gelu_kernels._gelu_kernel` (+ `autograd.GeluFn`, backward `_gelu_bwd_kernel`): the layer's unfused expert MLPs | other devices, dtypes, strides |
| `fused_experts` | pack + GELU expert MLPs + combine of `MoELayer`: `grouped_gemm_kernels` with the gather in the first GEMM's loads (`autograd.ExpertsFn` backward: gathers and gates in the GEMM loads, no atomics) | None (the layer's unfused path) when the tensors are not where Triton runs or fp16 |
Every primitive also falls back when its tensors are not where Triton runs (CPU tensors on a CUDA
machine; CUDA tensors under the interpreter). Each computes the same function as the reference:
same Plan fields, ids exact, lower expert id wins ties, float values within rounding.

`Routing.probs_TE` is always written by the fused router kernel (one extra T*E*4-byte store; on an
H100 at T=16384, E=128 the kernel takes 12.2 us with it and 10.1 us without, CUDA-graph replay),
so the Routing is complete for the balance loss and entropy; under autograd the backward
recomputes the reference formulas for the chosen ids (`autograd.RouteFn`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import dispatch, routers
from .. import plan as plan_mod
from .base import Backend
from ._triton.launch import runs_here
from ._triton.autograd_fns import CombineFn, ExpertsFn, GeluFn, PackFn, RouteFn, experts_forward
from ._triton.gelu_kernels import gelu as gelu_kernel
from ._triton.plan_kernels import plan_tensors as _triton_plan_tensors
from ._triton.topk_kernels import MAX_EXPERTS, MAX_TOP_K, MODES, route_topk


def route(logits_TE: torch.Tensor, strategy: str, top_k: int, *, temperature: float = 1.0, renormalize: bool = True,
          token_ids_T: torch.Tensor | None = None, bias_E: torch.Tensor | None = None,
          capacity_factor: float | None = None, seed_semantics: tuple[str, ...] = (),
          checked: bool = False) -> routers.Routing:
    """`routers.route` on the fused router kernel (see `kernels.topk` for the arithmetic); the same
    argument checks (`routers.check_route_args`) and invalid-input policy as the reference. The older
    tool's variants (`seed_semantics`) run the reference."""
    name = routers.check_route_args(logits_TE, strategy, top_k, temperature=temperature, token_ids_T=token_ids_T,
                                    bias_E=bias_E, seed_semantics=seed_semantics, checked=checked)
    T, E = logits_TE.shape
    fallback = (name in ("hash", "expert-choice") or routers.seed_route_factor(name, seed_semantics) is not None
                or E > MAX_EXPERTS or top_k > MAX_TOP_K or T == 0 or not runs_here(logits_TE, bias_E))
    if fallback:
        return routers.route(logits_TE, strategy, top_k, temperature=temperature, renormalize=renormalize,
                             token_ids_T=token_ids_T, bias_E=bias_E, capacity_factor=capacity_factor,
                             seed_semantics=seed_semantics)
    if name == "softk" and not renormalize:
        name = "softk-norenorm"
    mode = MODES[name]
    bias = bias_E if name == "aux-free" else None
    if logits_TE.requires_grad and torch.is_grad_enabled():
        ids, w, probs, hist, block_t = RouteFn.apply(logits_TE, mode, top_k, float(temperature), bias)
    else:
        ids, w, probs, (hist, block_t) = route_topk(logits_TE, mode, top_k, temperature=temperature, bias_E=bias,
                                                    write_hist=True)
    return FusedRouting(ids, w, probs, block_hist=None if hist is None else (hist, block_t, ids, ids._version))


@dataclass
class FusedRouting(routers.Routing):
    """A Routing plus the fused router's expert histogram per router block: (int32 [blocks, bins], tokens
    per block, the ids it counts, their version), so `build_plan` skips its histogram launch; ignored if
    the ids were replaced or written since."""

    block_hist: tuple | None = None

    def histogram_for_plan(self) -> tuple[torch.Tensor, int] | None:
        if self.block_hist is None:
            return None
        hist, block_t, ids, version = self.block_hist
        if self.expert_ids_TK is not ids or ids._version != version or self.valid_TK is not None:
            return None
        return hist, block_t


def plan_tensors(expert_ids_TK, weights_TK, valid_TK, num_experts, capacity, drop_policy, renormalize_kept, layout,
                 block_hist=None):
    """`plan.plan_tensors` on the plan kernels (reference when the tensors are not where Triton runs)."""
    if expert_ids_TK.numel() == 0 or not runs_here(expert_ids_TK, weights_TK, valid_TK):
        return plan_mod.plan_tensors(expert_ids_TK, weights_TK, valid_TK, num_experts, capacity, drop_policy,
                                     renormalize_kept, layout)
    return _triton_plan_tensors(expert_ids_TK, weights_TK, valid_TK, num_experts, capacity, drop_policy,
                                renormalize_kept, layout, block_hist=block_hist)


def build_plan(routing: routers.Routing, **kwargs) -> plan_mod.Plan:
    """`plan.build_plan` on the plan kernels, reusing the fused router's histogram when it has one."""
    hist = routing.histogram_for_plan() if isinstance(routing, FusedRouting) else None
    impl = plan_tensors if hist is None else functools.partial(plan_tensors, block_hist=hist)
    return plan_mod.build_plan(routing, impl=impl, **kwargs)


def pack(x_TH: torch.Tensor, plan: plan_mod.Plan) -> torch.Tensor:
    """`dispatch.pack`: expert-major packed rows [R, H] (push form; empty rows zero)."""
    dispatch.check_pack_input(x_TH, plan)
    if plan.num_tokens == 0 or not runs_here(x_TH, plan.row_TK):  # T = 0: no kernel launch with an empty grid
        return dispatch.pack(x_TH, plan)
    if x_TH.requires_grad and torch.is_grad_enabled():
        return PackFn.apply(x_TH, plan.row_TK, plan.token_index_R, plan.every_row_filled)
    from ._triton.pack_kernels import pack_rows

    return pack_rows(x_TH, plan.row_TK, plan.token_index_R, plan.every_row_filled)


def combine(y_RH: torch.Tensor, plan: plan_mod.Plan) -> torch.Tensor:
    """`dispatch.combine`: out[t] = sum of kept gate * y[row] in float32, rounded once to y's dtype."""
    dispatch.check_combine_input(y_RH, plan)
    if plan.num_tokens == 0 or not runs_here(y_RH, plan.row_TK):
        return dispatch.combine(y_RH, plan)
    if (y_RH.requires_grad or plan.gate_TK.requires_grad) and torch.is_grad_enabled():
        return CombineFn.apply(y_RH, plan.gate_TK, plan.row_TK, plan.token_index_R, plan.every_row_filled)
    from ._triton.combine_kernels import combine_rows

    return combine_rows(y_RH, plan.row_TK, plan.gate_TK)


def fused_experts(x_TH: torch.Tensor, w1_EHF: torch.Tensor, w2_EFH: torch.Tensor,
                  plan: plan_mod.Plan) -> torch.Tensor | None:
    """combine(gelu(pack(x) W1_e) W2_e) without the packed copy of x (weights in any float dtype, cast to
    x's in the GEMM loads); None when this backend has no fused path for these tensors."""
    if not runs_here(x_TH, w1_EHF, w2_EFH, plan.row_TK) or x_TH.dtype not in (torch.bfloat16, torch.float32):
        return None
    args = (x_TH, w1_EHF, w2_EFH, plan.gate_TK, plan.row_TK, plan.token_index_R, plan.kept_counts_E,
            plan.offsets_E1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args[:4]):
        return ExpertsFn.apply(*args)
    return experts_forward(*args, save=False)[0]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU on the elementwise kernels (torch's F.gelu where they do not run: other devices,
    dtypes or strides)."""
    if not runs_here(x) or x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or not x.is_contiguous():
        return torch.nn.functional.gelu(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return GeluFn.apply(x)
    return gelu_kernel(x)


def triton_backend() -> Backend:
    """The registry entry `triton` (see `moe_routing_bench.backends`)."""
    return Backend("triton", route, build_plan, pack, combine, fused_experts, gelu)
