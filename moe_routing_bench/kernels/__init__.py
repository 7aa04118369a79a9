"""Fused Triton kernels for the routing path (the `triton` backend).

Modules: `topk` (router softmax/sigmoid + top-k + weights), `plan` (histogram, scan, slots, drops),
`pack`, `combine` (and its backward), `autograd` (Functions for training), `triton_backend`
(the Backend), `roofline` (percent-of-copy report). Without a CUDA GPU the kernels run in Triton's
interpreter: TRITON_INTERPRET=1 is set here before any kernel is decorated.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .triton_backend import triton_backend  # noqa: E402

__all__ = ["triton_backend"]
