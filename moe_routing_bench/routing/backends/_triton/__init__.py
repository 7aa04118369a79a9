"""Private Triton kernels of the `triton` backend (`triton_ops` is their public face).

`topk_kernels` (router softmax/sigmoid + top-k + weights), `plan_kernels` (histogram, scan, slots,
drops), `pack_kernels`, `combine_kernels` (and its backward), `grouped_gemm_kernels` (the fused
expert path), `gelu_kernels` (the unfused expert MLPs' activation), `autograd_fns` (Functions for
training), `launch` (interpreter detection, configs, autotune). Without a CUDA GPU the kernels run
in Triton's interpreter.
"""
from ..base import use_triton_interpreter_without_gpu

use_triton_interpreter_without_gpu()
