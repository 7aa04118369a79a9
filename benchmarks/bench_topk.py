"""Router: softmax + top-k + gate weights (`Backend.route`, strategy softk)."""
from .common import BACKENDS, ROUTER_SHAPES, WORKLOADS, StageBenchmark, split_by_device


@split_by_device
class TopK(StageBenchmark):
    stage = "topk"
    version = "topk-v1"
    params = [BACKENDS, ROUTER_SHAPES, WORKLOADS[:2]]

    def time_topk(self, *params):
        self.fn()

    def track_topk_us(self, *params):
        return self._gpu_us()

    track_topk_us.unit = "us"
