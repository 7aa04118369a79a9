"""The whole routing path: top-k, plan, pack, combine in sequence (the number to compare backends by).

Over every workload: DESIGN section 7 asks zipf and hot to cost at most 1.2x uniform.
"""
from .common import BACKENDS, MAIN_SHAPES, WORKLOADS, StageBenchmark, split_by_device


@split_by_device
class RoutingPath(StageBenchmark):
    stage = "routing_path"
    version = "routing-path-v1"
    params = [BACKENDS, MAIN_SHAPES, WORKLOADS]

    def time_routing_path(self, *params):
        self.fn()

    def track_routing_path_us(self, *params):
        return self._gpu_us()

    track_routing_path_us.unit = "us"
