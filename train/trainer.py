"""What one training process holds and does per step: devices and ranks, data, model, optimizer,
the training step, evaluation, and the checkpointable state.

Shapes use suffixes: ``_T`` a token stream, ``_BS`` a batch, ``_LE`` layers x experts.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

import moe_routing_bench as mrb
from train.config import TrainConfig
from train.data import VOCAB_SIZE, eval_batches, get_batch, load_tokens, split_train_val
from train.model import LossAndStats, ModelConfig, MoETransformer

DATA_HINT = ("make it with `python train/export_tinystories.py --split validation --out PATH`, "
             "or leave out --data to train on the project's generated stories")


# ----------------------------------------------------------------------------- ranks and devices

@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None, distributed: bool = False, backend: str | None = None) -> DistContext:
    """This process's rank and device; starts the process group under torchrun (WORLD_SIZE > 1)."""
    want = distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise mrb.ConfigError("--device cuda but no CUDA device is visible")
    if not want:
        return DistContext(0, 1, 0, torch.device(name), False)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    dev = torch.device("cuda", local_rank) if name.startswith("cuda") else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise mrb.ConfigError("--distributed needs torchrun (RANK/WORLD_SIZE unset)")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        backend = "gloo" if dev.type != "cuda" else backend  # the seed's nccl on CPU
        dist.init_process_group(backend, **({"device_id": dev} if backend == "nccl" else {}))
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)


def all_reduce(t: torch.Tensor, ctx: DistContext, op=None) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reseed(seed: int, rank: int, step: int) -> None:
    """Dropout/jitter RNG: a function of (seed, rank, step), set at start and after each checkpoint,
    so a resumed run draws exactly what the uninterrupted run drew (no RNG state to store)."""
    s = (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)
    torch.manual_seed(s)
    random.seed(s)


# ----------------------------------------------------------------------------- schedule, optimizer

def lr_at(it: int, lr: float, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Learning rate of the it-th optimizer step (0-based): linear warm-up, then cosine to lr*min_ratio."""
    if warmup > 0 and it < warmup:
        return lr * (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, max_steps - warmup))
    low = lr * min_ratio
    return low + 0.5 * (lr - low) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only, or on every parameter with --decay-all (the older tool's)."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if o.decay_all or p.dim() >= 2]
    rest = [p for p in params if not (o.decay_all or p.dim() >= 2)]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), **kw)


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model's config from the model and MoE sections (fields of the same name)."""
    values = {**vars(cfg.model), **vars(cfg.moe), "vocab_size": VOCAB_SIZE,
              "seed_semantics": cfg.routing_semantics}
    return ModelConfig(**{f.name: values[f.name] for f in fields(ModelConfig) if f.name in values})


def check_expert_parallel(cfg: TrainConfig, world_size: int) -> None:
    """A ConfigError (one line) when --expert-parallel N cannot shard this run's experts."""
    n = cfg.run.expert_parallel
    if n == 1:
        return
    if cfg.moe.router == "dense":
        raise mrb.ConfigError(f"--expert-parallel {n}: the dense baseline has no experts to shard")
    if cfg.moe.num_experts % n:
        raise mrb.ConfigError(f"--expert-parallel {n}: --num-experts {cfg.moe.num_experts} is not a multiple of it")
    if world_size % n:
        raise mrb.ConfigError(f"--expert-parallel {n}: world size {world_size} is not a multiple of it "
                              f"(launch with torchrun --nproc_per_node={n} or a multiple)")
    if cfg.optim.compile:
        raise mrb.ConfigError(f"--expert-parallel {n} runs eagerly (the layer's split-size sync breaks the "
                              "compiled graph): drop --compile")


def load_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_T, val_T): --data split at a story boundary, or --val-data, or generated stories."""
    r = cfg.run
    try:
        tokens = load_tokens(r.data, num_generated_stories=r.num_stories, seed=0)  # same text for every seed
        if r.val_data:
            return tokens, load_tokens(r.val_data)
        return split_train_val(tokens, r.val_fraction)
    except FileNotFoundError as e:
        raise mrb.ConfigError(f"{e}: {DATA_HINT}") from None
    except ValueError as e:
        raise mrb.ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Model, optimizer, data and step counter of one training (or benchmark) process."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        device = ctx.device
        check_expert_parallel(cfg, ctx.world_size)
        dtype = mrb.parse_dtype(cfg.optim.dtype)
        self.amp_dtype = dtype if device.type == "cuda" and dtype != torch.float32 else None
        if self.amp_dtype == torch.float16 and cfg.run.expert_parallel > 1:
            # GradScaler skips a step on the ranks that see an inf: expert shards would diverge
            raise mrb.ConfigError(f"--expert-parallel {cfg.run.expert_parallel} with --dtype fp16: use bf16 or fp32")
        self.effective_dtype = self.amp_dtype or torch.float32
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.train_T, self.val_T = load_data(cfg)
        torch.manual_seed(cfg.optim.seed)
        self.model_cfg = model_config(cfg)
        self.model = MoETransformer(self.model_cfg).to(device)
        # sizes of the unsharded model (every expert counts), then this rank's expert shards of it:
        # the full model is built with the same seed everywhere, so the shards are its experts
        self.flops_per_token = self.model.flops_per_token(cfg.model.seq_len)
        self.params_total = sum(p.numel() for p in self.model.parameters())
        self.params_active = self.model.active_params()
        self.ep_groups = None
        if cfg.run.expert_parallel > 1:
            self.ep_groups = mrb.expert_parallel_groups(cfg.run.expert_parallel)
            mrb.shard_experts(self.model, self.ep_groups)
        m = cfg.moe
        alpha = m.aux_free_alpha if self.model_cfg.router == "aux-free" else m.load_balance_alpha
        self.step_module = LossAndStats(self.model, alpha, m.z_loss_beta)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.moe_layers = self.model.moe_layers()
        fwd = self.step_module
        if cfg.optim.compile:
            fwd = torch.compile(self.step_module, dynamic=False, mode=cfg.optim.compile_mode)
        self.eval_forward = fwd
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            # aux-free biases are updated identically on every rank (all-reduced counts): no buffer
            # broadcast in each forward (torch >= 2.13 renamed the option)
            sync_kw = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                       else {"broadcast_buffers": False})
            if self.ep_groups is not None:  # sharded experts: reduced in train_step (reduce_gradients)
                mrb.expert_parallel.ddp_ignore_expert_parameters(fwd)
            fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None,
                      gradient_as_bucket_view=True, **sync_kw)
        self.train_forward = fwd
        self.generator = torch.Generator().manual_seed(cfg.optim.seed)
        self.step = 0
        self.tokens_per_step = cfg.run.batch_size * cfg.model.seq_len * ctx.world_size
        self.bytes_per_token_strict = mrb.metrics.bytes_per_token_strict(  # per MoE layer
            self.model_cfg.top_k, cfg.model.dim, self.effective_dtype.itemsize)
        self._grads_checked = False

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def train_step(self):
        """One optimizer step; returns detached device tensors (ce, stats_LN, grad_norm) and the lr."""
        o, ctx = self.cfg.optim, self.ctx
        lr = lr_at(self.step, o.lr, o.warmup_steps, o.max_steps, o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_T, self.cfg.run.batch_size, self.cfg.model.seq_len, self.generator,
                         ctx.device, rank=ctx.rank, world_size=ctx.world_size)
        if o.compile:  # CUDA-graph modes: the previous step's outputs are consumed, memory reusable
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            loss, ce, stats, counts_LE = self.train_forward(x, y)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.ep_groups is not None:  # DDP averaged the rest; expert grads: summed over the DP group / world
            mrb.expert_parallel.reduce_gradients(self.model, self.ep_groups, dense=False)
        if not self._grads_checked:
            missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
            if missing:
                raise RuntimeError(f"parameters without gradient after backward: {missing}")
            self._grads_checked = True
        grad_norm = torch.zeros((), device=ctx.device)
        if o.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = (mrb.expert_parallel.clip_grad_norm_(self.model, o.grad_clip, self.ep_groups)
                         if self.ep_groups is not None
                         else torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip, foreach=True))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.model_cfg.router == "aux-free" and self.moe_layers:
            # every layer in one batched update: a few launches per step, not a few per layer
            counts_LE = all_reduce(counts_LE.clone(), ctx) if ctx.world_size > 1 else counts_LE
            biases = [layer.bias_E for layer in self.moe_layers]
            new_LE = mrb.update_aux_free_bias(torch.stack(biases), counts_LE, self.cfg.moe.aux_free_gamma)
            torch._foreach_copy_(biases, new_LE.unbind(0))
        self.step += 1
        return ce, stats, grad_norm.detach().float(), lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean validation CE over the windows of ``data.eval_batches``, all ranks."""
        r, ctx = self.cfg.run, self.ctx
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # sum of loss*tokens, tokens
        for x, y in eval_batches(self.val_T, r.batch_size, self.cfg.model.seq_len,
                                 r.eval_batches if r.eval_batches > 0 else None, ctx.device,
                                 rank=ctx.rank, world_size=ctx.world_size, stride=r.eval_stride or None,
                                 equal_per_rank=self.ep_groups is not None):
            # eager unless --compile-eval: a few forward passes do not repay a second compilation
            full = x.shape[0] == r.batch_size
            fwd = self.eval_forward if self.cfg.optim.compile_eval and full else self.step_module
            with self.autocast():
                _, ce, _, _ = fwd(x, y)
            total[0] += ce.double() * y.numel()
            total[1] += y.numel()
        self.model.train()
        all_reduce(total, ctx)
        return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")

    # checkpointable state: tensors and plain types only (loads with torch.load(weights_only=True)).
    # With expert parallelism it is the unsharded model's, so it loads at any --expert-parallel.
    def state(self, progress: dict) -> dict:
        """The checkpoint; with --expert-parallel every rank must call it (the expert shards are gathered)."""
        ep, g = mrb.expert_parallel, self.ep_groups
        model = ep.full_state_dict(self.model, g) if g else self.model.state_dict()
        optim = ep.full_optimizer_state_dict(self.optimizer, self.model, g) if g else self.optimizer.state_dict()
        return {"step": self.step, "model": model, "optimizer": optim,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "data_generator": self.generator.get_state(), "config": self.model_cfg.to_dict(),
                "args": self.cfg.flat(), "progress": progress}

    def load(self, state: dict) -> None:
        """Load a checkpoint of the unsharded model (written at any --expert-parallel)."""
        if self.ep_groups is not None:  # this rank's experts' slices
            mrb.expert_parallel.load_full_state_dict(self.model, state["model"], self.ep_groups)
            mrb.expert_parallel.load_full_optimizer_state_dict(self.optimizer, state["optimizer"], self.model,
                                                               self.ep_groups)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["data_generator"].cpu())
        self.step = int(state["step"])

    def param_max_abs_diff_across_ranks(self) -> float:
        """max |p_rank - p_rank0| over all parameters and ranks (0.0 on one process); expert shards
        are compared within their data-parallel group (the ranks holding the same experts)."""
        if self.ctx.world_size == 1:
            return 0.0
        experts = set(mrb.expert_parallel.expert_parameter_names(self.model))
        named = list(self.model.named_parameters())
        groups = [(dist.group.WORLD, [p for n, p in named if n not in experts])]
        if self.ep_groups is not None:
            groups.append((self.ep_groups.dp_group, [p for n, p in named if n in experts]))
        diff = torch.zeros(1, device=self.ctx.device)
        with torch.no_grad():
            for group, params in groups:
                flat = torch.cat([p.detach().float().reshape(-1) for p in params])
                ref = flat.clone()
                dist.broadcast(ref, dist.get_global_rank(group, 0), group=group)
                diff = torch.maximum(diff, (flat - ref).abs().max().reshape(1))
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)
