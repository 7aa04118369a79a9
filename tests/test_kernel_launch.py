"""Kernel launch plumbing: tuned configs cached per device and shape class on disk, launch options as
one context-scoped object, `configs_used` for records. The tuner itself needs a GPU, so here it is
replaced by a stub that picks a given config; everything around it runs for real (interpreter)."""
import json
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from moe_routing_bench.routing import dispatch, routers  # noqa: E402
from moe_routing_bench.routing import plan as plan_mod  # noqa: E402
from moe_routing_bench.routing.backends._triton import launch, pack_kernels  # noqa: E402
from moe_routing_bench.routing.backends.triton_ops import pack  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="stubs the tuner; the GPU tests tune for real")


@pytest.fixture
def stub_tuner(monkeypatch, tmp_path):
    """autotune 'on' with a tuner that records its calls and picks BLOCK_T=4, BLOCK_H=32."""
    calls = []

    def fake_tune(self, grid_fn, args, meta, skey):
        cfg = {"BLOCK_T": 4, "BLOCK_H": 32, "num_warps": 4}
        calls.append(skey)
        launch.TUNE_CACHE.put(skey, cfg, {"stub": 1.0})
        self.launch(grid_fn(cfg), args, {**meta, **cfg})
        return cfg

    monkeypatch.setattr(launch, "autotune_enabled", lambda: True)
    monkeypatch.setattr(launch.Launcher, "_tune", fake_tune)
    monkeypatch.setattr(launch, "TUNE_CACHE", launch.TuneCache())
    monkeypatch.setattr(pack_kernels._LAUNCH, "chosen", {})
    with launch.using(tune_cache=str(tmp_path)):
        yield calls, tmp_path


def _plan(T, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = routers.route(torch.randn(T, 16, generator=g), "softk", 2)
    return plan_mod.build_plan(r), torch.randn(T, H, generator=g)


def test_tuned_config_is_cached_on_disk_per_shape_class_and_reused(stub_tuner, monkeypatch):
    calls, root = stub_tuner
    p, x = _plan(100, 48)
    assert torch.equal(pack(x, p), dispatch.pack(x, p))
    assert len(calls) == 1 and "T~128" in calls[0] and "H=48" in calls[0]
    used = launch.configs_used()["pack"]
    assert used["source"] == "tuned now" and used["config"]["BLOCK_T"] == 4
    (path,) = root.iterdir()
    assert path.name == f"tune-interpreter-triton{launch.triton.__version__}.json"
    assert json.loads(path.read_text())[calls[0]]["config"]["BLOCK_H"] == 32
    p2, x2 = _plan(120, 48, seed=1)  # same shape class (T 65..128, H 48): no tuning
    assert torch.equal(pack(x2, p2), dispatch.pack(x2, p2))
    assert len(calls) == 1 and launch.configs_used()["pack"]["source"] == "tuned"
    p3, x3 = _plan(300, 48)  # another class
    pack(x3, p3)
    assert len(calls) == 2
    # a new process (fresh cache object, fresh launcher memory) reads the file instead of tuning
    monkeypatch.setattr(launch, "TUNE_CACHE", launch.TuneCache())
    monkeypatch.setattr(pack_kernels._LAUNCH, "chosen", {})
    assert torch.equal(pack(x2, p2), dispatch.pack(x2, p2))
    assert len(calls) == 2 and launch.configs_used()["pack"]["source"] == "tune-cache"


def test_options_are_scoped_and_validated():
    base = launch.options()
    with launch.using(autotune=False, poison="b") as opts:
        assert launch.options() is opts and not opts.autotune and opts.poison == "b"
        assert launch.empty(3, dtype=torch.int32, device="cpu").tolist() == [7654321] * 3
    assert launch.options() == base
    with pytest.raises(ValueError):
        with launch.using(poison="nope"):
            pass


def test_forced_config_wins_and_is_reported():
    p, x = _plan(64, 40)
    with launch.using(force_config={"pack": {"BLOCK_T": 2, "BLOCK_H": 16, "num_warps": 2}}):
        assert torch.equal(pack(x, p), dispatch.pack(x, p))
    used = launch.configs_used()["pack"]
    assert used["source"] == "forced" and used["config"]["BLOCK_H"] == 16
