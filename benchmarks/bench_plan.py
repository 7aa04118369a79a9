"""Plan: per-expert counts, offsets, slots and the pack permutation (`Backend.build_plan`, dropless)."""
from .common import BACKENDS, ROUTER_SHAPES, WORKLOADS, StageBenchmark, split_by_device


@split_by_device
class Plan(StageBenchmark):
    stage = "plan"
    version = "plan-v1"
    params = [BACKENDS, ROUTER_SHAPES, WORKLOADS[:2]]

    def time_plan(self, *params):
        self.fn()

    def track_plan_us(self, *params):
        return self._gpu_us()

    track_plan_us.unit = "us"
