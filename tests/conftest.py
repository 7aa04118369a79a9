"""Test set-up. Triton kernels run under the interpreter on machines without a GPU; the variable is
read when kernels are decorated, so it is set here (by the library's one function for it), before
any test imports them."""
import torch

from moe_routing_bench.routing.backends.base import use_triton_interpreter_without_gpu

use_triton_interpreter_without_gpu()
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; deselected (and counted) on machines without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)
