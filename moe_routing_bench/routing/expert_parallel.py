"""Expert parallelism: the experts sharded over ranks, tokens moved by all-to-all (torch.distributed).

Shape legend: T tokens on this rank, H hidden, E experts in all, P ranks of the expert-parallel (EP)
group, L = E/P experts held per rank ("local"), R rows of the local plan's packed buffer, N rows this
rank sends, M rows it receives, C overlap chunks.

One layer, on every rank of its EP group (DESIGN section 10):
  route this rank's tokens -> plan (ragged; capacity per rank) -> pack, expert-major, so the rows for
  each destination rank are contiguous
  -> `all_to_all_single` of the kept counts per expert, then ONE host sync: `.tolist()` of the split
     sizes, which `all_to_all_single` takes as Python lists (NCCL and gloo alike); the backward reuses
     them, so a layer syncs once per forward and backward together
  -> `all_to_all_single` of the packed rows with uneven splits ("dispatch")
  -> received rows reordered source-major -> expert-major, local grouped GEMM, reordered back ("local experts")
  -> the inverse `all_to_all_single` ("combine exchange") -> combine with the gate weights.
The backward of each exchange is the opposite `all_to_all_single`; every reordering is a gather by a
permutation whose backward writes each row back once, so forward and backward stay deterministic.

Semantics: rank r's output is `MoELayer`'s on rank r's tokens alone, with all E experts and the same
weights: routing, capacity C = ceil(cf * T_r * k / E) and drops are per rank, as when the single-GPU
layer is trained data-parallel. Dropless token-choice routers give what one layer gives on the
concatenated batch.

Process groups (`expert_parallel_groups`): world = P * D ranks. An EP group is P consecutive ranks
(keep it inside a node: torchrun numbers a node's ranks consecutively); a data-parallel (DP) group
takes the ranks holding the same experts, one from each EP group. Each rank holds L experts' weights;
an expert weight's gradient is summed over its DP group and divided by the world size, which makes it
the gradient of the mean of every rank's loss, the objective DDP averages the dense gradients to
(`reduce_gradients`). All other parameters are data-parallel over the world.

Overlap (`overlap_chunks` C > 1): each rank's local experts are split into C groups; every chunk's
dispatch exchange is launched at once (async), chunk c's experts run while later chunks are still in
flight, and chunk c's combine exchange is launched as soon as its experts are done. Forward only: in
the backward, autograd runs the reversed exchanges synchronously. `moe-bench bench-ep` measures whether
it pays. The layer runs eagerly: the split-size sync is a graph break for torch.compile.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from .layer import MoEConfig, MoELayer, ragged_expert_ffn
from . import routers
from .plan import Plan
from .validation import ConfigError, check_positive

__all__ = [
    "ExchangePlan", "ExpertParallelGroups", "ExpertParallelMoELayer", "clip_grad_norm_", "ddp_ignore_expert_parameters",
    "expert_parallel_groups", "expert_parameter_names", "full_optimizer_state_dict", "full_state_dict",
    "load_full_optimizer_state_dict", "load_full_state_dict", "moe_layer", "reduce_gradients", "shard_experts",
]


# ------------------------------------------------------------------------------------ process groups
@dataclass(frozen=True)
class ExpertParallelGroups:
    """This rank's EP group (holds every expert once) and DP group (ranks holding the same experts)."""

    ep_group: object
    dp_group: object
    ep_size: int
    ep_rank: int
    dp_size: int
    dp_rank: int

    @property
    def world_size(self) -> int:
        return self.ep_size * self.dp_size


def _subgroup(partition: list[list[int]]):
    """This rank's group of a partition of the world (every rank takes part in creating every group)."""
    if len(partition) == 1:
        return dist.group.WORLD
    mine, _ = dist.new_subgroups_by_enumeration(partition)
    return mine


def expert_parallel_groups(expert_parallel: int) -> ExpertParallelGroups:
    """EP x DP groups over the initialised world: EP groups of `expert_parallel` consecutive ranks.
    Every rank must call this, in the same order relative to other group creations."""
    check_positive(expert_parallel=expert_parallel)
    if not dist.is_initialized():
        raise ConfigError("expert parallelism needs torch.distributed initialised (launch with torchrun)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % expert_parallel:
        raise ConfigError(f"world size {world} is not a multiple of expert_parallel={expert_parallel}")
    P, D = expert_parallel, world // expert_parallel
    ep_group = _subgroup([list(range(d * P, (d + 1) * P)) for d in range(D)])
    dp_group = _subgroup([list(range(p, world, P)) for p in range(P)])
    return ExpertParallelGroups(ep_group, dp_group, P, rank % P, D, rank // P)


# ------------------------------------------------------------------------------ autograd primitives
class _AllToAll(torch.autograd.Function):
    """`all_to_all_single` with uneven splits; the backward is the reverse exchange. With `pending`
    (a list) the exchange is launched async and its work handle appended: wait before reading."""

    @staticmethod
    def forward(ctx, x_NH, send_splits, recv_splits, group, pending):
        ctx.splits, ctx.group = (send_splits, recv_splits), group
        x_NH = x_NH.contiguous()
        out_MH = x_NH.new_empty(sum(recv_splits), *x_NH.shape[1:])
        work = dist.all_to_all_single(out_MH, x_NH, recv_splits, send_splits, group=group,
                                      async_op=pending is not None)
        if pending is not None:
            pending.append(work)
        return out_MH

    @staticmethod
    def backward(ctx, grad_MH):
        send_splits, recv_splits = ctx.splits
        grad_MH = grad_MH.contiguous()
        grad_NH = grad_MH.new_empty(sum(send_splits), *grad_MH.shape[1:])
        dist.all_to_all_single(grad_NH, grad_MH, send_splits, recv_splits, group=ctx.group)
        return grad_NH, None, None, None, None


class _GatherRows(torch.autograd.Function):
    """x[index] for distinct row indices; the backward writes each gradient row back to its source row
    once (index_copy into zeros: no accumulation, so no atomics)."""

    @staticmethod
    def forward(ctx, x_RH, index_N):
        ctx.save_for_backward(index_N)
        ctx.num_rows = x_RH.shape[0]
        return x_RH.index_select(0, index_N)

    @staticmethod
    def backward(ctx, grad_NH):
        (index_N,) = ctx.saved_tensors
        return grad_NH.new_zeros(ctx.num_rows, *grad_NH.shape[1:]).index_copy_(0, index_N, grad_NH), None


def _inverse_permutation(order_N: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(order_N).scatter_(0, order_N, torch.arange(order_N.numel(), device=order_N.device))


def source_to_expert_major(counts_PL: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Rows arrive source-major (source p, then expert l; counts_PL[p, l] rows each). Returns the int64
    index i such that rows[i] is expert-major (expert l, then source p). `num_rows` = counts_PL.sum()."""
    P, L = counts_PL.shape
    counts_PL = counts_PL.to(torch.int64)
    flat = counts_PL.reshape(-1)
    src_start_LP = (torch.cumsum(flat, 0) - flat).view(P, L).t().reshape(-1)
    counts_LP = counts_PL.t().reshape(-1)
    block_M = torch.repeat_interleave(torch.arange(P * L, device=counts_PL.device), counts_LP, output_size=num_rows)
    dst_start = torch.cumsum(counts_LP, 0) - counts_LP
    within_M = torch.arange(num_rows, device=counts_PL.device) - dst_start[block_M]
    return src_start_LP[block_M] + within_M


# --------------------------------------------------------------------------------------- the layer
@dataclass(frozen=True)
class ExchangePlan:
    """The count exchange's result: split sizes on the host (the layer's one sync) and device indices."""

    chunk_bounds: tuple[int, ...]  # local expert boundaries of the overlap chunks: 0, ..., L
    send_CP: tuple[tuple[int, ...], ...]  # rows this rank sends to each EP rank, per chunk
    recv_CP: tuple[tuple[int, ...], ...]  # rows it receives from each EP rank, per chunk
    num_packed_rows: int  # R of the local plan (rows past num_send are dropped-row padding)
    recv_counts_PL: torch.Tensor  # int64 rows received from each source for each local expert
    send_order_N: torch.Tensor | None  # packed rows in chunk-major send order; None: the identity

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_bounds) - 1

    @property
    def num_send(self) -> int:
        return sum(map(sum, self.send_CP))

    @property
    def num_recv(self) -> int:
        return sum(map(sum, self.recv_CP))


class ExpertParallelMoELayer(MoELayer):
    """`MoELayer` with its experts sharded over an EP group: this rank holds experts
    [expert_offset, expert_offset + L) as w1_EHF/w2_EFH of L rows; router and aux-free bias are whole
    (data-parallel). Stages: route, plan (ragged), pack, exchange_counts, dispatch, local_experts,
    return_rows, combine; `forward` runs them in that order (see the module docstring)."""

    shards_experts = True

    def __init__(self, config: MoEConfig, groups: ExpertParallelGroups | None = None, overlap_chunks: int = 1):
        groups = groups or expert_parallel_groups(config.expert_parallel)
        if config.expert_parallel != groups.ep_size:
            raise ConfigError(f"config.expert_parallel={config.expert_parallel} but the EP group has {groups.ep_size} ranks")
        if config.num_experts % groups.ep_size:
            raise ConfigError(f"{config.num_experts} experts cannot be split evenly over {groups.ep_size} ranks")
        check_positive(overlap_chunks=overlap_chunks)
        super().__init__(config)
        self.groups = groups
        self.overlap_chunks = overlap_chunks

    @property
    def num_local_experts(self) -> int:
        return self.config.num_experts // self.groups.ep_size

    @property
    def expert_offset(self) -> int:
        return self.groups.ep_rank * self.num_local_experts

    @classmethod
    def from_full(cls, layer: MoELayer, groups: ExpertParallelGroups, overlap_chunks: int = 1) -> "ExpertParallelMoELayer":
        """This rank's shard of a layer holding every expert (copies: the full layer is left alone).
        The global RNG is left as it was, so sharding does not change later random draws."""
        with torch.random.fork_rng(devices=[]):
            ep = cls(replace(layer.config, expert_parallel=groups.ep_size), groups, overlap_chunks)
        L = layer.config.num_experts // groups.ep_size
        lo = groups.ep_rank * L
        state = {k: (v[lo:lo + L] if k in ("w1_EHF", "w2_EFH") else v).detach().clone()
                 for k, v in layer.state_dict().items()}
        ep.load_state_dict(state, assign=True)
        return ep.train(layer.training)

    def plan(self, routing: routers.Routing, x_TH: torch.Tensor, layout: str | None = "ragged") -> Plan:
        if layout not in (None, "ragged"):
            raise ConfigError("expert parallelism sends ragged rows (no padded layout)")
        return super().plan(routing, x_TH, layout="ragged")

    def exchange_counts(self, plan: Plan) -> ExchangePlan:
        """all_to_all_single of the kept counts per expert, then the layer's one host sync."""
        P, L, E = self.groups.ep_size, self.num_local_experts, self.config.num_experts
        C = min(self.overlap_chunks, L)
        bounds = tuple(i * L // C for i in range(C + 1))
        send_E = plan.kept_counts_E.to(torch.int64)
        recv_E = torch.empty_like(send_E)
        dist.all_to_all_single(recv_E, send_E, group=self.groups.ep_group)
        send_PL, recv_PL = send_E.view(P, L), recv_E.view(P, L)
        sizes_2CP = torch.stack([torch.stack([m[:, a:b].sum(1) for a, b in zip(bounds, bounds[1:])])
                                 for m in (send_PL, recv_PL)])
        send_CP, recv_CP = sizes_2CP.tolist()  # THE host sync: split sizes are Python ints
        num_send = sum(map(sum, send_CP))
        order = None
        if C > 1:  # chunk-major send order: chunk, then destination, then expert (a stable sort of the packed rows)
            expert_N = torch.repeat_interleave(torch.arange(E, device=send_E.device), send_E, output_size=num_send)
            local_N = expert_N % L
            chunk_N = ((local_N + 1) * C + L - 1) // L - 1  # the c with bounds[c] <= local < bounds[c+1]
            order = torch.argsort(chunk_N * P + expert_N // L, stable=True)
        return ExchangePlan(bounds, tuple(map(tuple, send_CP)), tuple(map(tuple, recv_CP)), plan.num_rows,
                            recv_PL, order)

    def dispatch(self, send_NH: torch.Tensor, ex: ExchangePlan, chunk: int = 0, pending: list | None = None) -> torch.Tensor:
        """Rows of chunk `chunk` to the ranks holding their experts; returns the received rows, source-major."""
        return _AllToAll.apply(send_NH, list(ex.send_CP[chunk]), list(ex.recv_CP[chunk]), self.groups.ep_group, pending)

    def local_experts(self, recv_MH: torch.Tensor, ex: ExchangePlan, chunk: int = 0) -> torch.Tensor:
        """This rank's experts of chunk `chunk` on the received rows; output in the rows' (source-major) order."""
        a, b = ex.chunk_bounds[chunk], ex.chunk_bounds[chunk + 1]
        w1, w2 = self.expert_weights(recv_MH.dtype)
        w1, w2 = w1[a:b], w2[a:b]
        M = sum(ex.recv_CP[chunk])
        if M == 0:  # no rows for these experts: zero gradients, but the weights stay in the graph
            return recv_MH + (w1.sum() + w2.sum()) * 0
        counts_PL = ex.recv_counts_PL[:, a:b]
        ends_L = torch.cumsum(counts_PL.sum(0), 0).to(torch.int32)
        if counts_PL.shape[0] == 1:  # one source: its rows are already expert-major
            return ragged_expert_ffn(recv_MH, w1, w2, ends_L, self.gelu)
        order_M = source_to_expert_major(counts_PL, M)
        y_MH = ragged_expert_ffn(_GatherRows.apply(recv_MH, order_M), w1, w2, ends_L, self.gelu)
        return _GatherRows.apply(y_MH, _inverse_permutation(order_M))

    def return_rows(self, y_MH: torch.Tensor, ex: ExchangePlan, chunk: int = 0, pending: list | None = None) -> torch.Tensor:
        """The combine exchange: expert outputs back to the ranks their tokens came from (send order)."""
        return _AllToAll.apply(y_MH, list(ex.recv_CP[chunk]), list(ex.send_CP[chunk]), self.groups.ep_group, pending)

    def exchange(self, x_RH: torch.Tensor, ex: ExchangePlan) -> torch.Tensor:
        """dispatch -> local experts -> return, chunked when overlap_chunks > 1; [R, H] -> [R, H] in
        packed order (rows past the kept ones are zero)."""
        N, C = ex.num_send, ex.num_chunks
        send_NH = x_RH[:N] if ex.send_order_N is None else _GatherRows.apply(x_RH, ex.send_order_N)
        sizes = [sum(s) for s in ex.send_CP]
        dispatch_pending = [] if C > 1 else None
        received = [self.dispatch(s, ex, c, dispatch_pending) for c, s in enumerate(send_NH.split(sizes))]
        return_pending = [] if C > 1 else None
        back = []
        for c in range(C):
            if dispatch_pending:
                dispatch_pending[c].wait()
            back.append(self.return_rows(self.local_experts(received[c], ex, c), ex, c, return_pending))
        for work in return_pending or ():
            work.wait()
        y_NH = back[0] if C == 1 else torch.cat(back)
        if ex.send_order_N is not None:
            y_NH = _GatherRows.apply(y_NH, _inverse_permutation(ex.send_order_N))
        R = ex.num_packed_rows
        return y_NH if R == N else torch.cat([y_NH, y_NH.new_zeros(R - N, *y_NH.shape[1:])])

    def dispatch_experts_combine(self, x_TH: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The layer's pack -> experts -> combine with the experts on their ranks: `forward` is MoELayer's."""
        y_RH = self.exchange(self.backend.pack(x_TH, plan), self.exchange_counts(plan))
        return self.backend.combine(y_RH, plan)


def moe_layer(config: MoEConfig, groups: ExpertParallelGroups | None = None, overlap_chunks: int = 1) -> MoELayer:
    """`MoELayer` when config.expert_parallel is 1 and no groups are given, else the expert-parallel layer."""
    if config.expert_parallel == 1 and groups is None:
        return MoELayer(config)
    return ExpertParallelMoELayer(config, groups, overlap_chunks)


def shard_experts(module: nn.Module, groups: ExpertParallelGroups, overlap_chunks: int = 1) -> nn.Module:
    """Replace every whole-expert `MoELayer` inside `module` (or `module` itself) by this rank's shard.
    Build the full model with the same seed on every rank first: the shards then hold exactly the
    single-process model's experts."""
    def shard(m):
        return ExpertParallelMoELayer.from_full(m, groups, overlap_chunks)

    if isinstance(module, MoELayer) and not isinstance(module, ExpertParallelMoELayer):
        return shard(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoELayer) and not isinstance(child, ExpertParallelMoELayer):
                setattr(parent, name, shard(child))
    return module


# ------------------------------------------------------------------------------------------ gradients
def expert_parameter_names(module: nn.Module) -> list[str]:
    """Names (relative to `module`) of the sharded expert weights: not data-parallel over the world."""
    return [f"{prefix}.{p}" if prefix else p for prefix, m in module.named_modules()
            if isinstance(m, ExpertParallelMoELayer) for p in ("w1_EHF", "w2_EFH")]


def _split_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    expert = {id(p) for m in module.modules() if isinstance(m, ExpertParallelMoELayer) for p in (m.w1_EHF, m.w2_EFH)}
    params = [p for p in module.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in expert], [p for p in params if id(p) in expert]


def ddp_ignore_expert_parameters(module: nn.Module) -> None:
    """Keep DistributedDataParallel (wrapping `module`) away from the sharded expert weights; reduce
    them with `reduce_gradients(module, groups, dense=False)` after backward."""
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, expert_parameter_names(module))


def _all_reduce_scaled(params: list[nn.Parameter], group, scale: float) -> None:
    """grad = scale * (sum of grad over `group`); group None: a group of one (scale only)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():  # one collective per dtype (none for a group of one: only the scale)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if group is not None:
            dist.all_reduce(flat, group=group)
        flat.mul_(scale)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


def reduce_gradients(module: nn.Module, groups: ExpertParallelGroups, *, dense: bool = True) -> None:
    """After backward: dense gradients averaged over the world (skip with dense=False when DDP did it);
    expert gradients summed over the DP group and divided by the world size (see the module docstring)."""
    if groups.world_size == 1:
        return
    dense_params, expert_params = _split_parameters(module)
    if dense:
        _all_reduce_scaled(dense_params, dist.group.WORLD, 1.0 / groups.world_size)
    if expert_params:
        _all_reduce_scaled(expert_params, groups.dp_group if groups.dp_size > 1 else None, 1.0 / groups.world_size)


def clip_grad_norm_(module: nn.Module, max_norm: float, groups: ExpertParallelGroups) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the whole (sharded) model, after `reduce_gradients`: the
    expert part of the squared norm is summed over the EP group, so every rank scales by the same factor."""
    dense_params, expert_params = _split_parameters(module)
    device = next(module.parameters()).device

    def sq(params):
        grads = [p.grad.float().square().sum() for p in params if p.grad is not None]
        return torch.stack(grads).sum() if grads else torch.zeros((), device=device)

    expert_sq = sq(expert_params)
    if groups.ep_size > 1:
        dist.all_reduce(expert_sq, group=groups.ep_group)
    total = (sq(dense_params) + expert_sq).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in dense_params + expert_params:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))
    return total


# --------------------------------------------------------------------------------------- checkpoints
# A sharded model saves and loads the state of the unsharded one, so checkpoints are interchangeable
# between expert-parallel sizes (and with single-process runs). Every rank of the EP group must call
# these (they gather over it); any one of them may write the result.
def _gather_dim0(t: torch.Tensor, groups: ExpertParallelGroups) -> torch.Tensor:
    if groups.ep_size == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(groups.ep_size)]
    dist.all_gather(parts, t.detach().contiguous(), group=groups.ep_group)
    return torch.cat(parts)


def _shard_dim0(t: torch.Tensor, groups: ExpertParallelGroups) -> torch.Tensor:
    L = t.shape[0] // groups.ep_size
    return t[groups.ep_rank * L:(groups.ep_rank + 1) * L]


def full_state_dict(module: nn.Module, groups: ExpertParallelGroups) -> dict:
    """`module.state_dict()` with every expert shard gathered: the unsharded model's state dict."""
    experts = set(expert_parameter_names(module))
    return {k: _gather_dim0(v, groups) if k in experts else v for k, v in module.state_dict().items()}


def load_full_state_dict(module: nn.Module, state: dict, groups: ExpertParallelGroups) -> None:
    """Load an unsharded model's state dict into the sharded `module` (this rank's experts only)."""
    experts = set(expert_parameter_names(module))
    module.load_state_dict({k: _shard_dim0(v, groups) if k in experts else v for k, v in state.items()})


def _expert_state_keys(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[int, torch.Size]:
    """Optimizer state-dict index -> shape of the expert parameters (indices follow param_groups order)."""
    _, expert_params = _split_parameters(module)
    expert = {id(p) for p in expert_params}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: p.shape for i, p in enumerate(params) if id(p) in expert}


def full_optimizer_state_dict(optimizer: torch.optim.Optimizer, module: nn.Module, groups: ExpertParallelGroups) -> dict:
    """`optimizer.state_dict()` with the expert parameters' per-element states (Adam's moments) gathered."""
    state = optimizer.state_dict()
    shapes = _expert_state_keys(optimizer, module)
    gathered = {}
    for i, s in state["state"].items():
        if i in shapes:
            s = {k: _gather_dim0(v, groups) if torch.is_tensor(v) and v.shape == shapes[i] else v for k, v in s.items()}
        gathered[i] = s
    return {**state, "state": gathered}


def load_full_optimizer_state_dict(optimizer: torch.optim.Optimizer, state: dict, module: nn.Module,
                                   groups: ExpertParallelGroups) -> None:
    """Load a state dict of the unsharded model's optimizer into this rank's (its experts' slices)."""
    shapes = _expert_state_keys(optimizer, module)
    sharded = {}
    for i, s in state["state"].items():
        i = int(i)
        if i in shapes:
            full = torch.Size([shapes[i][0] * groups.ep_size, *shapes[i][1:]])
            s = {k: _shard_dim0(v, groups) if torch.is_tensor(v) and v.shape == full else v for k, v in s.items()}
        sharded[i] = s
    optimizer.load_state_dict({**state, "state": sharded})
