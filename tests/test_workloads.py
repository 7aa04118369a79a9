"""Synthetic workloads: the routing each one promises (harness.workloads)."""
import pytest
import torch

import moe_routing_bench as mrb
from moe_routing_bench.harness import workloads
from moe_routing_bench.routing.validation import ConfigError


@pytest.mark.parametrize("T,E,K", [(37, 8, 2), (64, 16, 4), (5, 3, 3)])
def test_stream_sends_every_token_to_the_first_k_experts_and_packs_in_k_sequential_streams(T, E, K):
    logits_TE = workloads.router_logits(workloads.parse_workload("stream"), T, E, K, seed=3)
    routing = mrb.route(logits_TE, "softk", K)
    assert torch.equal(routing.expert_ids_TK, torch.arange(K).expand(T, K))
    plan = mrb.build_plan(routing)
    t, k = torch.meshgrid(torch.arange(T), torch.arange(K), indexing="ij")
    assert torch.equal(plan.row_TK, k * T + t)  # expert k's rows are tokens 0..T-1 in order
    x_TH = torch.randn(T, 6)
    assert torch.equal(mrb.pack(x_TH, plan), x_TH.repeat(K, 1))


def test_balanced_prefers_experts_round_robin():
    T, E, K = 20, 8, 2
    routing = mrb.route(workloads.router_logits(workloads.parse_workload("balanced"), T, E, K, seed=0), "softk", K)
    expected = (torch.arange(T)[:, None] * K + torch.arange(K)[None, :]) % E
    assert torch.equal(routing.expert_ids_TK, expected)


def test_unknown_workload_names_the_choices():
    with pytest.raises(ConfigError, match="stream"):
        workloads.parse_workload("streaming")
