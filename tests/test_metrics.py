"""Metric formulas on hand-computed values."""
import math

import pytest
import torch

from moe_routing_bench.routing import metrics


def test_strict_bytes():
    assert metrics.bytes_per_token_strict(2, 4096, 2) == 6 * 4096 * 2
    assert metrics.bytes_per_token_strict(2, 4096, 2, "pack") == 3 * 4096 * 2
    assert metrics.bytes_per_token_strict(8, 7168, 2, "combine") == 9 * 7168 * 2
    with pytest.raises(ValueError):
        metrics.bytes_per_token_strict(2, 8, 2, "gemm")
    assert metrics.bytes_moved_kept(kept_assignments=3, num_tokens=2, hidden_dim=4, dtype_bytes=2, op="pack") == 40


def test_bandwidth_units():
    bw = metrics.bandwidth(2**30, 0.5, copy_bytes_per_s=4 * 2**30)
    assert bw["bw_GiBps"] == pytest.approx(2.0)
    assert bw["bw_GBps"] == pytest.approx(2 * 2**30 / 1e9)
    assert bw["pct_of_copy"] == pytest.approx(50.0)
    assert "pct_of_copy" not in metrics.bandwidth(1, 1)


def test_load_stats_population_std():
    s = metrics.load_stats(torch.tensor([2, 4, 0, 2]))
    assert s["load_mean"] == 2.0
    assert s["load_std"] == pytest.approx(math.sqrt(2.0))  # population, not unbiased (1.633)
    assert s["load_cv"] == pytest.approx(math.sqrt(2.0) / 2)
    assert s["load_max_over_mean"] == 2.0
    assert s["empty_experts"] == 1


def test_drop_rates():
    kept = torch.tensor([[True, False], [False, False], [True, True]])
    d = metrics.drop_rates(kept)
    assert d["avg_drop_rate"] == pytest.approx(3 / 6)
    assert d["token_drop_rate"] == pytest.approx(1 / 3)
    valid = torch.tensor([[True, False], [False, False], [True, True]])
    d = metrics.drop_rates(kept, valid)  # token 1 had no assignment at all: not counted as dropped
    assert d["avg_drop_rate"] == 0.0 and d["token_drop_rate"] == 0.0


def test_gate_entropy():
    assert metrics.gate_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert metrics.gate_entropy(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0)
