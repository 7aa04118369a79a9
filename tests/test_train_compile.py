"""The training step traces into one graph under torch.compile (no graph break), as on the GPU."""
import pytest
import torch

from train.model import LossAndStats, ModelConfig, MoETransformer


@pytest.mark.slow
def test_step_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    cfg = ModelConfig(seq_len=16, layers=1, dim=32, heads=2, dropout=0.0, ffn_mult=2, num_experts=4, top_k=2,
                      router="softk", capacity_factor=1.25)
    step = LossAndStats(MoETransformer(cfg), 1e-2, 1e-3)
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: the grouped-GEMM path of the GPU
        loss_c, ce_c, stats_c, counts_c = compiled(x, y)
        loss_e, ce_e, stats_e, counts_e = step(x, y)
    loss_c.backward()
    assert torch.equal(counts_c, counts_e)
    assert float(loss_c.detach()) == pytest.approx(float(loss_e.detach()), rel=2e-2)
    assert all(p.grad is not None for p in step.parameters())
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("router", ["top1", "topk-hard", "hash", "expert-choice", "aux-free"])
def test_every_router_traces_into_one_graph(router):
    """A graph break in any router would split the compiled step (and cost throughput on the GPU)."""
    torch.manual_seed(0)
    cfg = ModelConfig(seq_len=16, layers=1, dim=32, heads=2, dropout=0.0, ffn_mult=2, num_experts=4,
                      top_k=1 if router == "top1" else 2, router=router, capacity_factor=1.25)
    step = LossAndStats(MoETransformer(cfg), 1e-2, 1e-3)
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=False)  # raises on a graph break
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(x, y)[0]
    loss.backward()
    assert torch.isfinite(loss) and step.model.moe_layers()[0].router.weight.grad is not None
    torch._dynamo.reset()
