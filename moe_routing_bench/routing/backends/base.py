"""What a backend is: the four routing primitives under one name (no imports of the registry or kernels)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..plan import Plan
from ..routers import Routing

__all__ = ["Backend", "use_triton_interpreter_without_gpu"]


@dataclass(frozen=True)
class Backend:
    name: str
    route: Callable[..., Routing]
    build_plan: Callable[..., Plan]
    pack: Callable[[torch.Tensor, Plan], torch.Tensor]
    combine: Callable[[torch.Tensor, Plan], torch.Tensor]
    # (x_TH, w1_EHF, w2_EFH, plan) -> out_TH: pack, the layer's GELU expert MLPs and combine in one
    # (no packed copy of x); returns None where it cannot run. None: the backend has no fused path.
    fused_experts: Callable[..., torch.Tensor | None] | None = None
    # the expert MLPs' activation on the layer's unfused path (exact GELU); None: torch's F.gelu
    gelu: Callable[[torch.Tensor], torch.Tensor] | None = None


def use_triton_interpreter_without_gpu() -> None:
    """Set TRITON_INTERPRET=1 on a machine without a CUDA GPU (the only place Triton kernels run there).

    Triton reads the variable when a kernel is decorated, so this must run before triton is imported;
    the backend registry and the kernel package call it on import. An explicit setting is kept.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
