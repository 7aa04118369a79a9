"""The MoE layer: router -> plan -> pack -> expert MLPs (grouped GEMM) -> combine.

Shape legend: T tokens, H hidden (model dim), F expert hidden (ffn dim), E experts, K top-k,
C capacity, R packed rows. The router is float32 whatever the activation dtype. Experts are GELU
MLPs `gelu(x W1_e) W2_e` over the packed rows: torch's grouped GEMM on the ragged layout when torch
has it; otherwise a batched matmul over the padded [E, C, H] layout when there is a capacity, else a
loop over experts (which synchronises the host: a fallback, not a fast path).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import routers
from .backends import get_backend
from .plan import Plan


def _grouped_mm_supported(x_RH: torch.Tensor, w_EHF: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if (x_RH.device.type == "cuda" or torch.compiler.is_compiling()) and x_RH.dtype != torch.bfloat16:
        return False  # CUDA kernels and the compile-time shape function take bfloat16 only
    align = 16 // x_RH.element_size()
    return x_RH.shape[1] % align == 0 and w_EHF.shape[2] % align == 0


def grouped_mm(x_RH: torch.Tensor, w_EHF: torch.Tensor, group_ends_E: torch.Tensor) -> torch.Tensor:
    """Rows [group_ends[e-1], group_ends[e]) of x times w[e]: [R, H] x [E, H, F] -> [R, F].
    Rows past the last group end are unspecified."""
    if _grouped_mm_supported(x_RH, w_EHF):
        return torch._grouped_mm(x_RH, w_EHF, offs=group_ends_E)
    out = x_RH.new_zeros(x_RH.shape[0], w_EHF.shape[2])
    start = 0
    for e, end in enumerate(group_ends_E.tolist()):
        if end > start:
            out[start:end] = x_RH[start:end] @ w_EHF[e]
        start = end
    return out


def expert_ffn(x_RH: torch.Tensor, w1_EHF: torch.Tensor, w2_EFH: torch.Tensor, plan: Plan) -> torch.Tensor:
    """gelu(x W1_e) W2_e for each expert's packed rows, by the plan's layout."""
    if plan.layout == "padded":
        E, C = plan.num_experts, plan.capacity
        h = F.gelu(torch.bmm(x_RH.view(E, C, -1), w1_EHF))
        return torch.bmm(h, w2_EFH).view(E * C, -1)
    h = F.gelu(grouped_mm(x_RH, w1_EHF, plan.group_ends_E))
    return grouped_mm(h, w2_EFH, plan.group_ends_E)


def preferred_layout(capacity: int | None, x: torch.Tensor, w1_EHF: torch.Tensor) -> str:
    """Ragged with grouped GEMM where torch can; padded (batched matmul) where a capacity allows."""
    if capacity is None or _grouped_mm_supported(x, w1_EHF):
        return "ragged"
    return "padded"


@dataclass(frozen=True)
class MoEConfig:
    """One MoE layer: sizes, router and its options, backend, capacity and drops."""

    dim: int
    ffn_dim: int
    num_experts: int
    top_k: int
    strategy: str = "softk"
    backend: str = "torch"
    capacity_factor: float | None = None  # None: dropless
    drop_policy: str = "position"
    renormalize_kept: bool = False
    temperature: float = 1.0
    jitter_eps: float = 0.0


@dataclass
class MoEAux:
    """What a forward pass leaves for losses and logging (tensors: no host sync until read)."""

    balance_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: routers.Routing
    plan: Plan


class MoELayer(nn.Module):
    """router -> plan -> pack -> experts -> combine; each stage is a method, so benchmarks time
    exactly what `forward` runs. Routing is float32 outside autocast; experts run in the activation
    (or autocast) dtype."""

    def __init__(self, config: MoEConfig):
        super().__init__()
        self.config = config
        self.strategy = routers.canonical_strategy(config.strategy)
        self.top_k = 1 if self.strategy == "top1" else config.top_k
        E = config.num_experts
        routers.check_top_k(self.top_k, E)
        self.backend = get_backend(config.backend)
        # expert-choice: each expert takes ceil(cf*T*k/E) tokens, cf 1.0 when dropless
        self._capacity_ratio = routers.capacity_ratio(
            config.capacity_factor or 1.0 if self.strategy == "expert-choice" else config.capacity_factor)
        self.router = nn.Linear(config.dim, E, bias=False)
        self.w1_EHF = nn.Parameter(torch.empty(E, config.dim, config.ffn_dim))
        self.w2_EFH = nn.Parameter(torch.empty(E, config.ffn_dim, config.dim))
        self.register_buffer("bias_E", torch.zeros(E))  # aux-free selection bias
        self.reset_parameters()

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def reset_parameters(self) -> None:
        dim, ffn = self.config.dim, self.config.ffn_dim
        nn.init.normal_(self.router.weight, std=0.1 / math.sqrt(dim))  # small router init (Switch)
        nn.init.normal_(self.w1_EHF, std=1 / math.sqrt(dim))
        nn.init.normal_(self.w2_EFH, std=1 / math.sqrt(ffn))

    @property
    def causal_safe(self) -> bool:
        return self.strategy != "expert-choice"

    def capacity(self, num_tokens: int) -> int | None:
        """Rows each expert may keep for a batch of `num_tokens` (None: dropless)."""
        if self._capacity_ratio is None:
            return None
        capacity = routers.capacity_from_ratio(num_tokens, self.top_k, self.num_experts, self._capacity_ratio)
        return min(num_tokens, capacity) if self.strategy == "expert-choice" else capacity  # EC never drops

    def route(self, x_TH: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> tuple[torch.Tensor, routers.Routing]:
        """Router logits [T, E] (float32) and the Routing; call outside autocast."""
        router_in = routers.jitter(x_TH, self.config.jitter_eps) if self.training else x_TH
        logits_TE = F.linear(router_in.float(), self.router.weight.float())
        routing = self.backend.route(
            logits_TE, self.strategy, self.top_k, temperature=self.config.temperature, token_ids_T=token_ids_T,
            bias_E=self.bias_E, capacity_factor=self.config.capacity_factor,
        )
        return logits_TE, routing

    def plan(self, routing: routers.Routing, x_TH: torch.Tensor) -> Plan:
        capacity = self.capacity(x_TH.shape[0])
        return self.backend.build_plan(
            routing, capacity_factor=None, capacity=capacity, drop_policy=self.config.drop_policy,
            renormalize_kept=self.config.renormalize_kept, layout=preferred_layout(capacity, x_TH, self.w1_EHF),
        )

    def expert_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w1_EHF.to(dtype), self.w2_EFH.to(dtype)

    def experts(self, x_RH: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The expert MLPs over packed rows, in the rows' dtype."""
        w1, w2 = self.expert_weights(x_RH.dtype)
        return expert_ffn(x_RH, w1, w2, plan)

    def dispatch_experts_combine(self, x_TH: torch.Tensor, plan: Plan) -> torch.Tensor:
        """pack -> experts -> combine; the backend's fused path (same function, no packed copy of x) when it
        has one for these tensors."""
        fused = self.backend.fused_experts
        out_TH = fused(x_TH, self.w1_EHF, self.w2_EFH, plan) if fused is not None else None
        if out_TH is None:
            out_TH = self.backend.combine(self.experts(self.backend.pack(x_TH, plan), plan), plan)
        return out_TH

    def forward(self, x_TH: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEAux]:
        dtype = torch.get_autocast_dtype(x_TH.device.type) if torch.is_autocast_enabled(x_TH.device.type) else x_TH.dtype
        with torch.autocast(x_TH.device.type, enabled=False):
            logits_TE, routing = self.route(x_TH, token_ids_T)
            x = x_TH.to(dtype)
            plan = self.plan(routing, x)
            out_TH = self.dispatch_experts_combine(x, plan)
        aux = MoEAux(routers.balance_loss(routing), routers.z_loss(logits_TE), routing, plan)
        return out_TH, aux

    @torch.no_grad()
    def update_bias(self, counts_E: torch.Tensor, gamma: float = 1e-3) -> None:
        """Aux-free balancing step; call after the optimizer step with (all-reduced) pre-drop counts."""
        if self.strategy == "aux-free":
            self.bias_E.copy_(routers.update_aux_free_bias(self.bias_E, counts_E, gamma))
