"""The MoE layer: router -> plan -> pack -> expert MLPs (grouped GEMM) -> combine.

Shape legend: T tokens, H hidden (model dim), F expert hidden (ffn dim), E experts, K top-k,
C capacity, R packed rows. The router is float32 whatever the activation dtype (`router_matmul`).
Experts are GELU MLPs `gelu(x W1_e) W2_e` over the packed rows (the backend's GELU where it has one):
torch's grouped GEMM on the ragged layout when torch has it; otherwise a batched matmul over the
padded [E, C, H] layout when there is a capacity, else a loop over experts (which synchronises the
host: a fallback, not a fast path).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import routers
from .backends import get_backend
from .plan import Plan
from .router_matmul import router_logits
from .validation import ConfigError


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


def expert_ffn(x_RH: torch.Tensor, w1_EHF: torch.Tensor, w2_EFH: torch.Tensor, plan: Plan,
               gelu: Callable[[torch.Tensor], torch.Tensor] = F.gelu) -> torch.Tensor:
    """gelu(x W1_e) W2_e for each expert's packed rows, by the plan's layout (`gelu`: a backend's)."""
    if plan.layout == "padded":
        E, C = plan.num_experts, plan.capacity
        h = gelu(torch.bmm(x_RH.view(E, C, -1), w1_EHF))
        return torch.bmm(h, w2_EFH).view(E * C, -1)
    return ragged_expert_ffn(x_RH, w1_EHF, w2_EFH, plan.group_ends_E, gelu)


def ragged_expert_ffn(x_RH: torch.Tensor, w1_EHF: torch.Tensor, w2_EFH: torch.Tensor,
                      group_ends_E: torch.Tensor, gelu: Callable[[torch.Tensor], torch.Tensor] = F.gelu) -> torch.Tensor:
    """gelu(x W1_e) W2_e over expert-major ragged rows (int32 group ends, the grouped GEMM's offs)."""
    h = gelu(grouped_mm(x_RH, w1_EHF, group_ends_E))
    return grouped_mm(h, w2_EFH, group_ends_E)


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
    # the older tool's semantics, factor by factor (routers.SEED_FACTORS; "all" for every one)
    seed_semantics: tuple[str, ...] = ()
    router_bias: bool = False  # the older tool's router is nn.Linear with a (zero-initialised) bias
    router_init_std: float | None = None  # None: 0.1/sqrt(dim) (Switch); the older tool: dim**-0.5
    expert_parallel: int = 1  # ranks the experts are sharded over (routing.expert_parallel); 1: all here
    # The backend's fused gather-GEMM expert path (triton) instead of pack -> grouped GEMM -> combine. Off
    # by default: on an H200 it reached 49.7% of dense bf16 fwd+bwd at T16384 H2048 F8192 E8 k2 against
    # 72.8% for the unfused path (results/gpu/h200/kernels/).
    fused_experts: bool = False

    def __post_init__(self):
        object.__setattr__(self, "seed_semantics", routers.check_seed_semantics(self.seed_semantics))
        if self.router_init_std is not None and not self.router_init_std > 0:
            raise ConfigError(f"router_init_std must be > 0 (or None for 0.1/sqrt(dim)), got {self.router_init_std!r}")


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

    shards_experts = False  # this class holds every expert; ExpertParallelMoELayer holds a shard

    def __init__(self, config: MoEConfig):
        super().__init__()
        self.config = config
        self.strategy = routers.canonical_strategy(config.strategy)
        self.top_k = 1 if self.strategy == "top1" else config.top_k
        E = config.num_experts
        routers.check_top_k(self.top_k, E)
        self.backend = get_backend(config.backend)
        self.seed_factor = routers.seed_route_factor(self.strategy, config.seed_semantics)
        # our expert-choice: each expert takes ceil(cf*T*k/E) tokens, cf 1.0 when dropless (the
        # older tool's is token choice in the end: the usual capacity)
        self._expert_choice = self.strategy == "expert-choice" and self.seed_factor is None
        self._capacity_ratio = routers.capacity_ratio(
            config.capacity_factor or 1.0 if self._expert_choice else config.capacity_factor)
        if config.expert_parallel != 1 and not self.shards_experts:
            raise ConfigError("MoELayer holds every expert: build expert_parallel > 1 with moe_layer() or ExpertParallelMoELayer")
        self.router = nn.Linear(config.dim, E, bias=config.router_bias)
        E_here = E // config.expert_parallel  # experts whose weights this module holds
        self.w1_EHF = nn.Parameter(torch.empty(E_here, config.dim, config.ffn_dim))
        self.w2_EFH = nn.Parameter(torch.empty(E_here, config.ffn_dim, config.dim))
        self.register_buffer("bias_E", torch.zeros(E))  # aux-free selection bias
        self.reset_parameters()

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def reset_parameters(self) -> None:
        dim, ffn = self.config.dim, self.config.ffn_dim
        std = 0.1 / math.sqrt(dim) if self.config.router_init_std is None else self.config.router_init_std
        nn.init.normal_(self.router.weight, std=std)  # default: small router init (Switch)
        if self.router.bias is not None:
            nn.init.zeros_(self.router.bias)
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
        return min(max(num_tokens, 1), capacity) if self._expert_choice else capacity  # our EC never drops

    def route(self, x_TH: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> tuple[torch.Tensor, routers.Routing]:
        """Router logits [T, E] (float32) and the Routing; call outside autocast."""
        router_in = routers.jitter(x_TH, self.config.jitter_eps) if self.training else x_TH
        logits_TE = router_logits(router_in, self.router.weight, self.router.bias)
        routing = self.backend.route(
            logits_TE, self.strategy, self.top_k, temperature=self.config.temperature, token_ids_T=token_ids_T,
            bias_E=self.bias_E, capacity_factor=self.config.capacity_factor,
            # only when set: a backend's route need not know the older tool's semantics to run ours
            **({"seed_semantics": self.config.seed_semantics} if self.config.seed_semantics else {}),
        )
        return logits_TE, routing

    def plan(self, routing: routers.Routing, x_TH: torch.Tensor, layout: str | None = None) -> Plan:
        """The dispatch plan; `layout` None picks `preferred_layout`."""
        capacity = self.capacity(x_TH.shape[0])
        return self.backend.build_plan(
            routing, capacity_factor=None, capacity=capacity, drop_policy=self.config.drop_policy,
            renormalize_kept=routers.seed_renormalize_kept(self.seed_factor, self.config.renormalize_kept),
            layout=layout or preferred_layout(capacity, x_TH, self.w1_EHF),
        )

    def expert_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w1_EHF.to(dtype), self.w2_EFH.to(dtype)

    def experts(self, x_RH: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The expert MLPs over packed rows, in the rows' dtype."""
        w1, w2 = self.expert_weights(x_RH.dtype)
        return expert_ffn(x_RH, w1, w2, plan, self.gelu)

    @property
    def gelu(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The expert MLPs' activation: the backend's GELU where it has one, else torch's."""
        return self.backend.gelu or F.gelu

    def dispatch_experts_combine(self, x_TH: torch.Tensor, plan: Plan) -> torch.Tensor:
        """pack -> experts -> combine; with `config.fused_experts`, the backend's fused path (same function, no
        packed copy of x) where it has one for these tensors."""
        fused = self.backend.fused_experts if self.config.fused_experts else None
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
        aux = MoEAux(self.balance_loss(routing, plan), routers.z_loss(logits_TE), routing, plan)
        return out_TH, aux

    def balance_loss(self, routing: routers.Routing, plan: Plan) -> torch.Tensor:
        """Unscaled: Switch's (gradient through the router probabilities), or the older tool's on kept
        counts (no gradient) when `seed_semantics` has "balance_loss"."""
        if "balance_loss" in self.config.seed_semantics:
            return routers.seed_balance_loss(plan.kept_counts_E)
        return routers.balance_loss(routing)

    @torch.no_grad()
    def update_bias(self, counts_E: torch.Tensor, gamma: float = 1e-3) -> None:
        """Aux-free balancing step; call after the optimizer step with (all-reduced) pre-drop counts."""
        if self.strategy == "aux-free":
            self.bias_E.copy_(routers.update_aux_free_bias(self.bias_E, counts_E, gamma))
