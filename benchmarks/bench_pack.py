"""Pack (dispatch): gather token rows into the expert-major buffer (`Backend.pack`)."""
from .common import BACKENDS, STAGE_SHAPES, StageBenchmark, split_by_device


@split_by_device
class Pack(StageBenchmark):
    stage = "pack"
    version = "pack-v1"
    params = [BACKENDS, STAGE_SHAPES, ["uniform"]]

    def time_pack(self, *params):
        self.fn()

    def track_pack_us(self, *params):
        return self._gpu_us()

    track_pack_us.unit = "us"
