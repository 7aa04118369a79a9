"""Expert parallelism on CPU with gloo: 2 and 4 ranks started with torch.multiprocessing.

The oracle is the single-process `MoELayer` holding every expert, with the same weights, on each
rank's own tokens (the EP layer's semantics: routing, capacity and drops per rank). Tolerances, float32:
outputs and gradients within atol 2e-5 + rtol 1e-5 (the grouped GEMMs see the same rows in different
groupings and orders; routing decisions are identical, so nothing larger is allowed). Expert-weight
gradients are compared with the oracle's gradients summed over the EP group's ranks.
Training: a tiny MoE model trained 3 SGD steps EP x DP equals single-process training on the same
global batch (the mean of the per-shard losses, which is what data-parallel training optimises).

Each world size is one spawn (module-scoped fixture) running every case; the tests read its results.
"""
from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch import nn

import moe_routing_bench as mrb
from moe_routing_bench.harness import commands, ep_bench
from moe_routing_bench.routing import expert_parallel as ep_mod

ATOL, RTOL = 2e-5, 1e-5
H, F, E = 16, 32, 8


BENCH_ARGS = ["bench-ep", "--num-tokens", "64", "--hidden-dim", "32", "--ffn-dim", "32", "--num-experts", "8",
              "--top-k", "2", "--dtype", "float32", "--device", "cpu", "--warmup", "0", "--iters", "2",
              "--workloads", "uniform,hot", "--overlap-chunks", "1,2", "--check"]


@dataclass(frozen=True)
class LayerCase:
    name: str
    strategy: str = "softk"
    capacity_factor: float | None = None
    drop_policy: str = "position"
    renormalize: bool = False
    tokens: tuple[int, ...] = (13, 7, 9, 3)  # per rank: uneven on purpose
    top_k: int = 2
    expert_parallel: int = 0  # 0: the world
    chunks: int = 1
    zero_router: bool = False  # every logit 0: ties send every token to experts 0..k-1, all on rank 0
    seed_semantics: tuple[str, ...] = ()  # the older tool's semantics (with its router bias)


def _layer_cases(world: int) -> list[LayerCase]:
    cases = []
    if world == 2:
        for s in mrb.STRATEGIES:
            for cf in (None, 1.0):
                cases.append(LayerCase(f"{s}-cf{cf}", s, cf, top_k=1 if s == "top1" else 2))
        cases += [
            LayerCase("softk-score-renorm-cf0.5", "softk", 0.5, "score", True),
            LayerCase("softk-all-to-rank0", "softk", zero_router=True),
            LayerCase("top1-all-to-rank0-cf1", "top1", 1.0, top_k=1, zero_router=True),
            LayerCase("softk-k4-chunks2", "softk", None, top_k=4, chunks=2),
            LayerCase("topk-hard-chunks4-cf1", "topk-hard", 1.0, chunks=4),
            LayerCase("softk-all-to-rank0-chunks3", "softk", zero_router=True, chunks=3),
            LayerCase("topk-hard-seed-all-cf1", "topk-hard", 1.0, seed_semantics=("all",)),
            LayerCase("expert-choice-seed-all", "expert-choice", 1.25, seed_semantics=("all",)),
        ]
    else:
        cases += [
            LayerCase("softk-ep4", "softk"),
            LayerCase("softk-ep4-cf1", "softk", 1.0),
            LayerCase("expert-choice-ep4", "expert-choice", 1.25),
            LayerCase("hash-ep4-cf1", "hash", 1.0),
            LayerCase("aux-free-ep4", "aux-free"),
            LayerCase("softk-ep4-all-to-rank0", "softk", zero_router=True),
            LayerCase("softk-ep4-chunks2-cf1.25", "softk", 1.25, chunks=2),
            LayerCase("softk-ep2dp2-cf1.25", "softk", 1.25, expert_parallel=2),
            LayerCase("top1-ep2dp2-chunks2", "top1", None, top_k=1, expert_parallel=2, chunks=2),
        ]
    return cases


def _inputs(case: LayerCase, rank: int):
    gen = torch.Generator().manual_seed(1000 + rank)
    T = case.tokens[rank]
    return torch.randn(T, H, generator=gen), torch.randint(0, 5000, (T,), generator=gen), torch.randn(T, H, generator=gen)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over elements of |a - b| / (ATOL + RTOL |b|): <= 1 passes."""
    if a.numel() == 0 and b.numel() == 0:
        return 0.0
    a, b = a.detach(), b.detach()
    return float(((a.float() - b.float()).abs() / (ATOL + RTOL * b.float().abs())).max())


def _run_layer_case(case: LayerCase, rank: int, world: int, groups_by_ep: dict) -> dict:
    P = case.expert_parallel or world
    groups = groups_by_ep[P]
    torch.manual_seed(0)  # the same full layer on every rank
    cfg = mrb.MoEConfig(H, F, E, case.top_k, strategy=case.strategy, capacity_factor=case.capacity_factor,
                        drop_policy=case.drop_policy, renormalize_kept=case.renormalize,
                        seed_semantics=case.seed_semantics, router_bias=bool(case.seed_semantics))
    full = mrb.MoELayer(cfg)
    with torch.no_grad():
        if case.zero_router:
            full.router.weight.zero_()
        if case.strategy == "aux-free":
            full.bias_E.copy_(torch.linspace(-0.3, 0.3, E))
    layer = mrb.ExpertParallelMoELayer.from_full(full, groups, overlap_chunks=case.chunks)

    x, ids, g_out = _inputs(case, rank)
    results = {}
    outs = {}
    for name, module in (("ref", full), ("ep", layer)):
        xi = x.clone().requires_grad_(True)
        out, aux = module(xi, ids)
        loss = (out * g_out).sum() + 0.1 * aux.balance_loss + 0.01 * aux.z_loss
        loss.backward()
        outs[name] = (out.detach(), xi.grad, module.router.weight.grad, aux.balance_loss.detach())
    for i, what in enumerate(("out", "x_grad", "router_grad", "balance_loss")):
        results[what] = _max_err(outs["ep"][i], outs["ref"][i])

    L = E // P
    lo = groups.ep_rank * L
    for w in ("w1_EHF", "w2_EFH"):
        summed = getattr(full, w).grad.clone()
        dist.all_reduce(summed, group=groups.ep_group)  # the oracle's expert gradient over the EP group's tokens
        results[f"{w}_grad"] = _max_err(getattr(layer, w).grad, summed[lo:lo + L])

    if case.capacity_factor is None and case.strategy != "expert-choice":  # dropless token choice: = one global batch
        with torch.no_grad():
            members = [r for r in range(world) if r // P == rank // P]
            xs = [_inputs(case, r) for r in members]
            out_all, _ = full(torch.cat([a for a, _, _ in xs]), torch.cat([b for _, b, _ in xs]))
            start = sum(case.tokens[r] for r in members if r < rank)
            results["out_vs_global_batch"] = _max_err(outs["ep"][0], out_all[start:start + case.tokens[rank]])

    with torch.no_grad():  # what was exchanged, for the tests of empty ranks and uneven splits
        _, routing = layer.route(x, ids)
        ex = layer.exchange_counts(layer.plan(routing, x))
    results["num_recv"] = ex.num_recv
    results["send_splits"] = [sum(col) for col in zip(*ex.send_CP)]
    results["empty_local_experts"] = int((ex.recv_counts_PL.sum(0) == 0).sum())
    results["kept"] = int(layer.plan(routing, x).kept_TK.sum())
    results["assignments"] = routing.expert_ids_TK.numel() if routing.valid_TK is None else int(routing.valid_TK.sum())
    return results


# ---------------------------------------------------------------------------------------- training
class TinyMoE(nn.Module):
    def __init__(self, capacity_factor):
        super().__init__()
        self.inp = nn.Linear(H, H)
        self.moe = mrb.MoELayer(mrb.MoEConfig(H, F, E, 2, strategy="softk", capacity_factor=capacity_factor))
        self.out = nn.Linear(H, H)

    def loss(self, x, y):
        h = torch.tanh(self.inp(x))
        out, aux = self.moe(h)
        return nn.functional.mse_loss(self.out(h + out), y) + 0.05 * aux.balance_loss


def _batch(step: int, rank: int):
    gen = torch.Generator().manual_seed(10_000 * step + rank)
    return torch.randn(12, H, generator=gen), torch.randn(12, H, generator=gen)


class _LossModule(nn.Module):
    """What DDP wraps: (x, y) -> loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return self.model.loss(x, y)


def _run_training(rank: int, world: int, groups, capacity_factor, use_ddp: bool, steps=3, lr=0.5, max_norm=0.05):
    """3 SGD steps with global-norm clipping; dense gradients by reduce_gradients, or by DDP (use_ddp)."""
    torch.manual_seed(1)
    ref = TinyMoE(capacity_factor)
    model = ep_mod.shard_experts(copy.deepcopy(ref), groups)
    fwd = _LossModule(model)
    if use_ddp:
        ep_mod.ddp_ignore_expert_parameters(fwd)
        fwd = nn.parallel.DistributedDataParallel(fwd)
    ref_opt, opt = torch.optim.SGD(ref.parameters(), lr=lr), torch.optim.SGD(model.parameters(), lr=lr)
    ref_losses, ep_losses, ref_norms = [], [], []
    for step in range(steps):
        # the single-process oracle: the global batch as the mean of the per-rank shards' losses
        ref_loss = torch.stack([ref.loss(*_batch(step, r)) for r in range(world)]).mean()
        ref_loss.backward()
        ref_norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)))
        ref_opt.step()
        ref_opt.zero_grad()
        ref_losses.append(ref_loss.item())

        loss = fwd(*_batch(step, rank))
        loss.backward()
        ep_mod.reduce_gradients(model, groups, dense=not use_ddp)
        ep_mod.clip_grad_norm_(model, max_norm, groups)
        opt.step()
        opt.zero_grad()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        ep_losses.append(float(mean_loss) / world)
    L = E // groups.ep_size
    lo = groups.ep_rank * L
    err = max(_max_err(q.detach(), (p[lo:lo + L] if n.endswith(("w1_EHF", "w2_EFH")) else p).detach())
              for (n, p), q in zip(ref.named_parameters(), model.parameters()))
    return {"ref_losses": ref_losses, "ep_losses": ep_losses, "param_err": err, "ref_grad_norms": ref_norms,
            "checkpoint_err": _checkpoint_roundtrip(ref, model, groups, capacity_factor)}


def _checkpoint_roundtrip(ref: nn.Module, model: nn.Module, groups, capacity_factor) -> float:
    """The sharded model's full state equals the unsharded model's; Adam state survives a save at one
    EP size and a load at another (here: into a fresh shard of the same size and into the full model)."""
    full = ep_mod.full_state_dict(model, groups)
    err = max(_max_err(full[k], v) for k, v in ref.state_dict().items())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.loss(*_batch(9, groups.ep_rank)).backward()
    ep_mod.reduce_gradients(model, groups)
    opt.step()  # Adam moments now exist, expert ones sharded
    opt_state = ep_mod.full_optimizer_state_dict(opt, model, groups)
    twin = ep_mod.shard_experts(TinyMoE(capacity_factor), groups)
    ep_mod.load_full_state_dict(twin, ep_mod.full_state_dict(model, groups), groups)
    err = max([err] + [_max_err(q, p) for p, q in zip(model.parameters(), twin.parameters())])
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    ep_mod.load_full_optimizer_state_dict(twin_opt, opt_state, twin, groups)
    for a, b in zip(opt.state_dict()["state"].values(), twin_opt.state_dict()["state"].values()):
        err = max(err, _max_err(a["exp_avg"], b["exp_avg"]), _max_err(a["exp_avg_sq"], b["exp_avg_sq"]))
    single = TinyMoE(capacity_factor)
    single.load_state_dict(ep_mod.full_state_dict(twin, groups))
    single_opt = torch.optim.AdamW(single.parameters(), lr=1e-3)
    single_opt.load_state_dict(opt_state)  # the unsharded optimizer takes the gathered state as it is
    for (n, p), q in zip(single.named_parameters(), twin.parameters()):
        err = max(err, _max_err(ep_mod._shard_dim0(p, groups) if n.endswith(("w1_EHF", "w2_EFH")) else p, q))
    return err


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                           timeout=datetime.timedelta(seconds=60))
    try:
        eps = sorted({c.expert_parallel or world for c in _layer_cases(world)})
        groups_by_ep = {P: ep_mod.expert_parallel_groups(P) for P in eps}
        results = {c.name: _run_layer_case(c, rank, world, groups_by_ep) for c in _layer_cases(world)}
        for P in eps:
            for cf in (None, 1.0):
                results[f"train-ep{P}-cf{cf}"] = _run_training(rank, world, groups_by_ep[P], cf, use_ddp=False)
        results[f"train-ep{world}-ddp"] = _run_training(rank, world, groups_by_ep[world], 1.0, use_ddp=True)
        if world == 2:  # bench-ep inside the existing world (torchrun's path minus the process start)
            args = commands.build_parser().parse_args(BENCH_ARGS + ["--out", out_path + ".bench.jsonl"])
            ep_bench.run(args)
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()


_RESULTS: dict[int, list[dict]] = {}


def _results(world: int, tmp_path_factory) -> list[dict]:
    if world not in _RESULTS:
        out = tmp_path_factory.mktemp(f"ep{world}") / "results.json"
        mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
        _RESULTS[world] = json.loads(out.read_text())
    return _RESULTS[world]


CASES = [(w, c) for w in (2, 4) for c in _layer_cases(w)]
ERROR_KEYS = ("out", "x_grad", "router_grad", "balance_loss", "w1_EHF_grad", "w2_EFH_grad", "out_vs_global_batch")


@pytest.mark.parametrize("world,case", CASES, ids=[f"w{w}-{c.name}" for w, c in CASES])
def test_ep_layer_equals_single_process_layer(world, case, tmp_path_factory):
    per_rank = [r[case.name] for r in _results(world, tmp_path_factory)]
    for rank, res in enumerate(per_rank):
        for key in ERROR_KEYS:
            if key in res:
                assert res[key] <= 1.0, f"rank {rank} {key}: error {res[key]:.3g} x tolerance"
    assert sum(r["num_recv"] for r in per_rank) == sum(r["kept"] for r in per_rank)  # every kept row moved once
    if case.capacity_factor is not None and case.strategy != "expert-choice":
        assert any(r["kept"] < r["assignments"] for r in per_rank) or case.capacity_factor >= 1.0
    if case.zero_router:  # every token to rank 0's experts: the other ranks receive nothing, their experts idle
        P = case.expert_parallel or world
        assert all(r["num_recv"] == 0 for i, r in enumerate(per_rank) if i % P != 0)
        assert all(r["empty_local_experts"] == E // P for i, r in enumerate(per_rank) if i % P != 0)
        assert all(r["send_splits"][1:] == [0] * (P - 1) for r in per_rank)


def test_splits_are_uneven_and_capacity_drops_happen(tmp_path_factory):
    """The cases above really exercise uneven splits, empty experts and drops (a test that could pass vacuously otherwise)."""
    per_rank = [r["softk-cf1.0"] for r in _results(2, tmp_path_factory)]
    splits = [s for r in per_rank for s in r["send_splits"]]
    assert len(set(splits)) > 1
    drops = [r for r in _results(2, tmp_path_factory) if r["softk-score-renorm-cf0.5"]["kept"]
             < r["softk-score-renorm-cf0.5"]["assignments"]]
    assert drops


@pytest.mark.parametrize("world,key", [(2, "train-ep2-cfNone"), (2, "train-ep2-cf1.0"), (2, "train-ep2-ddp"),
                                       (4, "train-ep4-cf1.0"), (4, "train-ep2-cfNone"), (4, "train-ep2-cf1.0"),
                                       (4, "train-ep4-ddp")])
def test_ep_training_equals_single_process_training(world, key, tmp_path_factory):
    per_rank = [r[key] for r in _results(world, tmp_path_factory)]
    for res in per_rank:
        assert res["ep_losses"] == pytest.approx(res["ref_losses"], rel=1e-5, abs=1e-6)
        assert res["param_err"] <= 1.0
        assert res["checkpoint_err"] <= 1.0
        assert res["ref_losses"][-1] != res["ref_losses"][0]  # the steps changed the model
    assert max(per_rank[0]["ref_grad_norms"]) > 0.05  # clipping was active, so the global norm was tested


def test_layer_refuses_bad_configs():
    with pytest.raises(mrb.ConfigError, match="expert_parallel"):
        mrb.MoELayer(mrb.MoEConfig(H, F, E, 2, expert_parallel=2))
    with pytest.raises(mrb.ConfigError, match="torch.distributed"):
        mrb.ExpertParallelMoELayer(mrb.MoEConfig(H, F, E, 2, expert_parallel=2))


def test_source_to_expert_major_is_the_permutation():
    counts = torch.tensor([[2, 0, 1], [1, 3, 0]])
    # source-major rows: s0e0 s0e0 s0e2 s1e0 s1e1 s1e1 s1e1 -> expert-major: e0(s0 s0 s1) e1(s1 s1 s1) e2(s0)
    idx = ep_mod.source_to_expert_major(counts, 7)
    assert idx.tolist() == [0, 1, 3, 4, 5, 6, 2]


def _check_bench_records(recs: list[dict], world: int) -> None:
    assert [r["workload"] for r in recs] == ["uniform", "hot"]
    for r in recs:
        assert r["world_size"] == world and r["expert_parallel"] == world and r["host_syncs_per_layer"] == 1
        assert r["name"] == f"ep_layer_ep{world}_dp1" and r["median_us"] == pytest.approx(r["fwd_ms"] * 1e3)
        for phase in ep_bench.PHASES:
            assert r[f"{phase}_ms"] > 0
        assert r["fwd_ms_chunks2"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["dispatch_bytes_per_rank"] == 64 * 2 * 32 * 4  # dropless: every assignment's row, float32
        assert r["a2a_bytes_per_rank"] >= r["dispatch_bytes_per_rank"] and r["dispatch_pct_of_a2a"] > 0
        assert r["device"] == "cpu" and r["git_commit"] and "workloads" not in r
        assert r["check_passed"] and r["check_tolerance"] == 1e-4
        assert 0 <= r["check_out_rel_err"] <= 1e-5 and r["check_w2_grad_rel_err"] <= 1e-5  # float32: rounding only


def test_bench_ep_on_two_gloo_ranks(tmp_path_factory):
    _results(2, tmp_path_factory)
    path = next(tmp_path_factory.getbasetemp().glob("ep2*/results.json.bench.jsonl"))
    recs = mrb.read_jsonl(path)
    _check_bench_records(recs, 2)
    assert recs[1]["recv_rows_max_over_mean"] > recs[0]["recv_rows_max_over_mean"]  # hot: one rank gets more


@pytest.fixture
def world_of_one():
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield ep_mod.expert_parallel_groups(1)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cf", [None, 1.0])
def test_world_of_one_is_the_single_layer(world_of_one, cf):
    torch.manual_seed(3)
    full = mrb.MoELayer(mrb.MoEConfig(H, F, E, 2, capacity_factor=cf))
    layer = mrb.shard_experts(full, world_of_one, overlap_chunks=2)
    assert isinstance(layer, mrb.ExpertParallelMoELayer) and layer is not full
    x = torch.randn(40, H)
    grads = []
    for m in (full, layer):
        xi = x.clone().requires_grad_(True)
        out, _ = m(xi)
        out.backward(torch.ones_like(out))
        grads.append((out, xi.grad, m.w1_EHF.grad, m.router.weight.grad))
    for a, b in zip(*grads):
        assert _max_err(b, a) <= 1.0


def test_bench_ep_world_of_one_writes_records(tmp_path):
    out = tmp_path / "ep.jsonl"
    assert commands.main(BENCH_ARGS + ["--out", str(out)]) == 0
    recs = mrb.read_jsonl(out)
    _check_bench_records(recs, 1)
    assert all(r["overhead_fwd"] > 0 and r["single_fwd_bwd_ms"] > 0 for r in recs)  # the single-GPU layer baseline
    from moe_routing_bench.suite import store

    (series,) = store.jsonl_series(recs)  # what `suite.store jsonl` exports into the result store
    assert sorted(series.values.values()) == pytest.approx(sorted(r["median_us"] for r in recs))  # one per workload
    assert not dist.is_initialized()  # the world of one it made is gone


@pytest.mark.parametrize("flags,message", [
    (["--hidden-dim", "4"], "hidden-dim"),
    (["--overlap-chunks", "0"], "overlap-chunks"),
    (["--capacity-factor", "lots"], "capacity-factor"),
    (["--workloads", "spiky"], "workload"),
    (["--num-experts", "6", "--expert-parallel", "4"], "world size"),
])
def test_bench_ep_bad_input_is_one_line_exit_2(flags, message, capsys, tmp_path):
    assert commands.main(BENCH_ARGS + flags + ["--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-bench: error:") and message in err
    assert not (tmp_path / "x.jsonl").exists() and not dist.is_initialized()


@pytest.mark.gpu
@pytest.mark.parametrize("cf", [None, 1.25])
def test_world_of_one_on_gpu_bf16_syncs_the_host_once(cf):
    """On CUDA (NCCL world of one): the EP layer equals the single layer in bf16, and its forward makes
    exactly one synchronising call (the split sizes), its backward none."""
    import warnings

    device = torch.device("cuda", 0)
    created = ep_bench.init_distributed(device)
    try:
        torch.manual_seed(0)
        full = mrb.MoELayer(mrb.MoEConfig(256, 512, 16, 2, capacity_factor=cf)).to(device, torch.bfloat16)
        layer = ep_mod.ExpertParallelMoELayer.from_full(full, ep_mod.expert_parallel_groups(1), overlap_chunks=2)
        x = torch.randn(1024, 256, device=device, dtype=torch.bfloat16)
        got = []
        for m in (full, layer):
            xi = x.clone().requires_grad_(True)
            out, _ = m(xi)
            out.float().square().mean().backward()
            got.append((out.float(), xi.grad.float(), m.w1_EHF.grad.float()))
        for a, b in zip(*got):
            torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)
        torch.cuda.synchronize()
        xi = x.clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as fwd_w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out, _ = layer(xi)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        with warnings.catch_warnings(record=True) as bwd_w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out.float().square().mean().backward()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # torch also warns once that the debug mode is a prototype: count only the reported syncs
        syncs = [str(w.message) for w in fwd_w if "called a synchronizing" in str(w.message)]
        assert len(syncs) == 1, syncs
        assert not [w for w in bwd_w if "called a synchronizing" in str(w.message)]
    finally:
        if created:
            dist.destroy_process_group()


def test_bench_ep_check_fails_loudly(monkeypatch, capsys):
    """--check catches an EP layer that drifts from the single layer (here: expert outputs scaled by 1.01)."""
    original = ep_mod.ExpertParallelMoELayer.local_experts
    monkeypatch.setattr(ep_mod.ExpertParallelMoELayer, "local_experts", lambda self, *a, **k: original(self, *a, **k) * 1.01)
    with pytest.raises(SystemExit) as exc:
        commands.main(BENCH_ARGS + ["--workloads", "uniform", "--overlap-chunks", "1", "--single-baseline", "off"])
    assert exc.value.code == 1
    assert "bench-ep --check failed" in capsys.readouterr().err and not dist.is_initialized()
