"""Capacity: the routing path with a capacity factor (drops, position policy), and the drop rate.

`track_avg_drop_rate` is a property of the routing, not a timing: dropped assignments / (T*k) for
the reference backend, on every device (the same number everywhere for the same shape).
"""
from .common import BACKENDS, MAIN_SHAPES, WORKLOADS, StageBenchmark, api, skip_unless, split_by_device, stage_setup


@split_by_device
class Capacity(StageBenchmark):
    version = "capacity-v1"
    param_names = ["backend", "shape", "capacity_factor", "workload"]
    params = [BACKENDS, MAIN_SHAPES, [1.0, 1.25], WORKLOADS[:2]]

    def setup(self, backend, shape, capacity_factor, workload):
        self.case, self.fn = stage_setup("routing_path", backend, shape, workload, capacity_factor=capacity_factor)

    def time_routing_path(self, *params):
        self.fn()

    def track_routing_path_us(self, *params):
        return self._gpu_us()

    track_routing_path_us.unit = "us"

    def track_avg_drop_rate(self, backend, *params):
        mrb = api()
        inputs = mrb.make_inputs(self.case)
        b = mrb.get_backend("torch")
        routing = b.route(inputs.logits_TE, self.case.strategy, self.case.top_k, token_ids_T=inputs.token_ids_T)
        plan = b.build_plan(routing, capacity_factor=self.case.capacity_factor)
        return mrb.drop_rates(plan.kept_TK, routing.valid_TK)["avg_drop_rate"]

    track_avg_drop_rate.unit = "fraction"


# the drop rate does not depend on the backend: the torch rows only
skip_unless(Capacity, "track_avg_drop_rate", lambda p: p["backend"] == "torch")
