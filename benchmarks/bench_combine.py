"""Combine: weighted sum of each token's expert rows (`Backend.combine`)."""
from .common import BACKENDS, STAGE_SHAPES, StageBenchmark, split_by_device


@split_by_device
class Combine(StageBenchmark):
    stage = "combine"
    version = "combine-v1"
    params = [BACKENDS, STAGE_SHAPES, ["uniform"]]

    def time_combine(self, *params):
        self.fn()

    def track_combine_us(self, *params):
        return self._gpu_us()

    track_combine_us.unit = "us"
