"""moe_routing_bench.measure: the warm-up keywords the EP benchmark and training benchmark rely on."""
from __future__ import annotations

import time

import pytest
import torch

import moe_routing_bench as mrb

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_fixed_count_warmup_then_hook_then_timed_calls(device, warmup):
    log = []
    t = mrb.measure(lambda: log.append("call"), device, warmup=warmup, iters=4, flush_l2=False, warmup_s=None,
                    after_warmup=lambda: log.append("hook"))
    assert log == ["call"] * warmup + ["hook"] + ["call"] * 4
    assert t.reps == 4 and len(t.samples_s) == 4 and min(t.samples_s) <= t.median_s <= max(t.samples_s)


def test_samples_are_kept_in_order_but_left_out_of_records():
    durations = iter([3e-3, 0.0, 1e-3, 0.0])  # alternate a sleep and a no-op: samples alternate too
    t = mrb.measure(lambda: time.sleep(next(durations)), "cpu", warmup=0, iters=4)
    assert t.samples_s[0] > t.samples_s[1] and t.samples_s[2] > t.samples_s[3]
    assert "samples_s" not in t.as_record() and set(t.as_record("x_")) == {f"x_{k}" for k in t.as_record()}


@pytest.mark.gpu  # CUDA: the time-based warm-up; deselected and counted without a GPU
def test_time_based_warmup_runs_at_least_warmup_s():
    calls = []
    mrb.measure(lambda: calls.append(1), "cuda", warmup=1, iters=1, flush_l2=False, warmup_s=0.02)
    assert len(calls) > 2
