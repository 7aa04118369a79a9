"""The MoE layer (`mrb.MoELayer`): router, plan, pack, expert MLPs, combine.

Forward alone (inference) and forward + backward (training), capacity factor 1.25 (the seed's
bench_moe_layer default), expert hidden 4 * H; peak memory where it matters (CPU: resident set of
the process; GPU: torch's peak allocation during forward + backward).
"""
from .common import BACKENDS, DTYPE, LAYER_SHAPES, SEED, api, gpu_median_us, prepare, split_by_device


@split_by_device
class MoELayer:
    version = "moe-layer-v1"
    param_names = ["backend", "shape"]
    params = [BACKENDS, list(LAYER_SHAPES)]
    timeout = 600
    warmup_time = 0.2
    repeat = (3, 10, 20.0)

    def setup(self, backend, shape):
        import torch

        bench = api()
        tokens, hidden, experts, top_k, device = LAYER_SHAPES[shape]
        prepare(device, backend)
        self.device = device
        torch.manual_seed(SEED)
        self.layer = bench.moe_layer(hidden, 4 * hidden, experts, top_k, backend=backend, capacity_factor=1.25).to(device)
        case = bench.Case(tokens, hidden, experts, top_k, dtype=DTYPE, device=device, seed=SEED).validated()
        self.x = bench.make_inputs(case).x_TH
        self.x_grad = self.x.detach().clone().requires_grad_(True)
        self.forward_backward()  # warm-up (and compilation for the compile backend)

    def forward(self):
        import torch

        with torch.no_grad():
            return self.layer(self.x)

    def forward_backward(self):
        out, aux = self.layer(self.x_grad)
        (out.float().square().mean() + 0.01 * aux.balance_loss).backward()

    def time_forward(self, *params):
        self.forward()

    def time_forward_backward(self, *params):
        self.forward_backward()

    def peakmem_forward_backward(self, *params):
        self.forward_backward()

    def track_forward_us(self, *params):
        return gpu_median_us(self.forward, self.device)

    track_forward_us.unit = "us"

    def track_forward_backward_us(self, *params):
        return gpu_median_us(self.forward_backward, self.device)

    track_forward_backward_us.unit = "us"

    def track_cuda_peak_mib(self, *params):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.forward_backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20

    track_cuda_peak_mib.unit = "MiB"
