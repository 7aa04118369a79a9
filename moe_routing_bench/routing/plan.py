"""The dispatch plan: where every assignment goes, built on the device without host syncs.

Shape legend: T tokens, K slots per token, A = T*K assignments in token-major order (t, k),
E experts, C capacity per expert, R rows of the packed buffer.

Packed rows are expert-major: expert 0's kept assignments, then expert 1's, ... Within an expert
the order is the drop policy's priority:
  `position` - token order (t, then k), the seed's rule: later tokens lose when an expert is full;
  `score`    - higher gate weight first, token order among equal weights.
Layouts: `ragged` packs kept rows contiguously (offsets_E1 are the int32 group ends that grouped
GEMM takes; R = A when dropless, min(A, E*C) with a capacity, rows past offsets_E1[-1] unspecified);
`padded` gives expert e the rows [e*C, (e+1)*C) (R = E*C, empty rows zero after pack).
A dropped assignment has row -1 and gate 0: it contributes nothing to the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .validation import ConfigError, check_expert_ids, check_finite
from .routers import Routing, capacity as capacity_for

DROP_POLICIES = ("position", "score")
LAYOUTS = ("ragged", "padded")


@dataclass(frozen=True)
class Plan:
    num_tokens: int
    num_experts: int
    top_k: int
    capacity: int | None
    layout: str
    every_row_filled: bool  # static: dropless and no empty slots, so pack needs no zero rows
    counts_E: torch.Tensor  # int32 assignments per expert before drops
    kept_counts_E: torch.Tensor  # int32 kept assignments per expert
    offsets_E1: torch.Tensor  # int32 [E+1] start row of each expert, then the end
    slot_TK: torch.Tensor  # int32 rank of the assignment within its expert (policy order)
    kept_TK: torch.Tensor  # bool
    row_TK: torch.Tensor  # int64 packed row of each kept assignment, -1 when dropped
    token_index_R: torch.Tensor  # int64 source token of each packed row, T for an empty row
    gate_TK: torch.Tensor  # float32 combine weight, 0 where dropped

    @property
    def num_rows(self) -> int:
        return self.token_index_R.shape[0]

    @property
    def group_ends_E(self) -> torch.Tensor:
        """int32 cumulative row ends per expert, the `offs` of torch's grouped GEMM."""
        return self.offsets_E1[1:]


def num_rows(num_tokens: int, top_k: int, num_experts: int, capacity: int | None, layout: str) -> int:
    """Static row count R of the packed buffer."""
    if layout == "padded":
        if capacity is None:
            raise ConfigError("the padded layout needs a capacity factor (dropless plans are ragged)")
        return num_experts * capacity
    assignments = num_tokens * top_k
    return assignments if capacity is None else min(assignments, num_experts * capacity)


# Backends' plan_tensors (e.g. _triton/plan_kernels.py) repeat this signature on purpose: they plug in through it.
def plan_tensors(
    expert_ids_TK: torch.Tensor,
    weights_TK: torch.Tensor,
    valid_TK: torch.Tensor | None,
    num_experts: int,
    capacity: int | None,
    drop_policy: str,
    renormalize_kept: bool,
    layout: str,
) -> tuple[torch.Tensor, ...]:
    """The reference plan as a tuple of tensors (the order of Plan's tensor fields)."""
    T, K = expert_ids_TK.shape
    E, A = num_experts, T * K
    device = expert_ids_TK.device
    R = num_rows(T, K, E, capacity, layout)

    ids_A = expert_ids_TK.reshape(-1).to(torch.int64)
    if valid_TK is not None:
        ids_A = torch.where(valid_TK.reshape(-1), ids_A, E)  # bucket E: no assignment, sorts last
    if drop_policy == "position":
        order_A = torch.argsort(ids_A, stable=True)
    else:
        by_score = torch.argsort(-weights_TK.detach().reshape(-1).float(), stable=True)
        order_A = by_score[torch.argsort(ids_A[by_score], stable=True)]

    counts_E1 = torch.zeros(E + 1, dtype=torch.int64, device=device)
    counts_E1.scatter_add_(0, ids_A, torch.ones_like(ids_A))
    starts_E1 = torch.cumsum(counts_E1, 0) - counts_E1
    arange_A = torch.arange(A, device=device)
    slot_A = torch.empty_like(ids_A)
    slot_A.scatter_(0, order_A, arange_A - starts_E1[ids_A[order_A]])

    kept_A = ids_A < E
    counts_E = counts_E1[:E]
    kept_counts_E = counts_E
    if capacity is not None:
        kept_A = kept_A & (slot_A < capacity)
        kept_counts_E = counts_E.clamp(max=capacity)
    expert_A = ids_A.clamp(max=E - 1)
    if layout == "padded":
        offsets_E1 = torch.arange(E + 1, device=device, dtype=torch.int64) * capacity
    else:
        offsets_E1 = torch.cat([counts_E.new_zeros(1), torch.cumsum(kept_counts_E, 0)])
    row_A = torch.where(kept_A, offsets_E1[expert_A] + slot_A, -1)

    token_index = torch.full((R + 1,), T, dtype=torch.int64, device=device)
    token_index.scatter_(0, torch.where(kept_A, row_A, R), arange_A // K)  # row R collects the drops

    weights = weights_TK.float()
    gate = torch.where(kept_A.view(T, K), weights, torch.zeros_like(weights))
    if renormalize_kept:
        kept_sum = gate.sum(-1, keepdim=True)
        total = weights.sum(-1, keepdim=True) if valid_TK is None else torch.where(valid_TK, weights, 0.0).sum(-1, keepdim=True)
        gate = gate * torch.where(kept_sum > 0, total / kept_sum.clamp_min(1e-30), torch.zeros_like(kept_sum))

    return (
        counts_E.to(torch.int32), kept_counts_E.to(torch.int32), offsets_E1.to(torch.int32),
        slot_A.view(T, K).to(torch.int32), kept_A.view(T, K), row_A.view(T, K), token_index[:R], gate,
    )


def check_routing(routing: Routing, *, checked: bool = False) -> None:
    """A Routing's shapes and dtypes agree (always, no host sync); with `checked`, its expert ids
    are in [0, E) and its weights finite (reads values: host sync). See `validation` for the policy."""
    ids, weights, valid = routing.expert_ids_TK, routing.weights_TK, routing.valid_TK
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ConfigError(f"expert ids must be an integer [tokens, k] tensor, got "
                          f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else ids!r}")
    T, K = ids.shape
    if K < 1:
        raise ConfigError("expert ids must have at least one slot per token (k >= 1)")
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (T, K) or not weights.is_floating_point():
        raise ConfigError(f"gate weights must be a floating-point [{T}, {K}] tensor like the expert ids")
    if routing.probs_TE.dim() != 2 or routing.probs_TE.shape[0] != T or routing.probs_TE.shape[1] < 1:
        raise ConfigError(f"router probabilities must be [{T}, experts], got {tuple(routing.probs_TE.shape)}")
    if valid is not None and (tuple(valid.shape) != (T, K) or valid.dtype != torch.bool):
        raise ConfigError(f"valid_TK must be a bool [{T}, {K}] tensor")
    if any(t.device != ids.device for t in (weights, *(() if valid is None else (valid,)))):
        raise ConfigError("the Routing's tensors are on different devices")
    if checked:
        check_expert_ids(ids, valid, routing.num_experts)
        check_finite("gate weights", weights if valid is None else weights[valid])


def check_plan_args(routing: Routing, drop_policy: str, layout: str, capacity: int | None) -> None:
    if drop_policy not in DROP_POLICIES:
        raise ConfigError(f"unknown drop policy {drop_policy!r}; choose from {', '.join(DROP_POLICIES)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
        raise ConfigError(f"capacity must be a positive integer or None, got {capacity!r}")
    num_rows(routing.num_tokens, routing.top_k, routing.num_experts, capacity, layout)


def build_plan(
    routing: Routing,
    *,
    capacity_factor: float | None = None,
    capacity: int | None = None,
    drop_policy: str = "position",
    renormalize_kept: bool = False,
    layout: str = "ragged",
    impl=plan_tensors,
    checked: bool = False,
) -> Plan:
    """Plan the dispatch of `routing`. Give either `capacity_factor` (C = ceil(cf*T*K/E)) or an
    explicit `capacity`; neither means dropless. `renormalize_kept` rescales each token's kept
    weights to its original total. `impl` computes the tensors (a backend may pass its own).

    Invalid input (`validation` states the policy): inconsistent shapes or dtypes raise ConfigError
    always; with `checked=True` (host sync) so do expert ids outside [0, E) and non-finite weights,
    which unchecked give an unspecified plan. T = 0 gives an empty plan."""
    check_routing(routing, checked=checked)
    if capacity is None:
        capacity = capacity_for(routing.num_tokens, routing.top_k, routing.num_experts, capacity_factor)
    check_plan_args(routing, drop_policy, layout, capacity)
    tensors = impl(routing.expert_ids_TK, routing.weights_TK, routing.valid_TK, routing.num_experts,
                   capacity, drop_policy, renormalize_kept, layout)
    filled = capacity is None and routing.valid_TK is None
    return Plan(routing.num_tokens, routing.num_experts, routing.top_k, capacity, layout, filled, *tensors)
