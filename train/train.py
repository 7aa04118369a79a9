"""Train a small MoE language model (one process, or DDP under torchrun) and log what routing costs.

    python train/train.py --max-steps 200 --eval-interval 50 --device cuda
    torchrun --standalone --nproc_per_node=2 train/train.py --distributed --data data/tinystories_val.txt
    python train/train.py --bench --compile --router softk ...     # throughput only (tokens/s)

Outputs in --outdir: ``train_log.jsonl`` (a record per logged step, then ``{"done": true, ...}``),
``hparams.json`` (every setting, versions, git commit, device), ``ckpt.pt`` (model, optimizer, step,
data-generator state; aux-free biases are model buffers), written atomically. A rerun of the same
command resumes from ``ckpt.pt`` (``--no-resume`` starts over); the log is cut back to the
checkpoint's step, so it never holds records of two attempts at the same step.

Metric definitions (DESIGN section 4):
- ``train_loss``: mean LM cross-entropy (nats per byte) over every step of the interval.
- ``tokens_per_s``: global tokens of the timed training steps / their wall time. Evaluation and
  checkpointing are outside the timed region (the device is synchronised at each log point only),
  and so is the first step of each process (compilation). ``tokens_per_s_per_rank`` = / world size.
- ``flops_per_token``: training FLOPs from ACTIVE parameters (experts k/E), 6*N_active + 12*L*dim*S;
  ``tflops`` (alias ``eff_tflops``) = flops_per_token * tokens_per_s / 1e12.
- ``bytes_per_token_strict``: forward pack+combine bytes of ONE MoE layer, (2+2k)*dim*dtype_bytes
  (the older tool's convention); ``moe_layers`` = how many; ``bw_GiBps_strict`` = bytes_per_token_strict
  * tokens_per_s in GiB/s, ``bw_GiBps_strict_all_layers`` the same times moe_layers.
- routing statistics (``train.model.STAT_NAMES``: ``drop_rate``, ``token_drop_rate``, ``load_cv`` on
  pre-drop counts, ``load_cv_kept`` on kept counts, ``gate_entropy`` of the full distribution,
  ``gate_entropy_selected`` of the k gates, ``mean_combine_weight``, ``mean_top1_prob``,
  ``balance_loss``, ``z_loss`` unscaled) are means over the steps of the interval, across ranks:
  ``<name>_per_layer`` per MoE layer, ``<name>`` their mean over the layers.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import inspect
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast stays off on shared hosts
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from moe_routing_bench.routing import metrics
from moe_routing_bench.routing import routers  # noqa: E402
from moe_routing_bench.routing.validation import ConfigError, parse_dtype  # noqa: E402
from moe_routing_bench.harness.records import environment, write_atomic  # noqa: E402
from train.data import (VOCAB_SIZE, eval_batches, get_batch, load_tokens,  # noqa: E402
                        split_train_val)
from train.model import (DENSE, ROUTERS, STAT_NAMES, LossAndStats, ModelConfig, MoETransformer,  # noqa: E402
                         stats_record)

LOG_NAME = "train_log.jsonl"
CKPT_NAME = "ckpt.pt"
HPARAMS_NAME = "hparams.json"
SEED_BACKEND_NAMES = {"torch_soft": "torch", "torch_hard": "torch", "torch": "torch"}


class SimulatedKill(RuntimeError):
    """Raised by the test hook ``kill_after_step``: the run stops as if killed (no done record)."""


# ----------------------------------------------------------------------------- arguments

def _cf(text: str) -> float | None:
    if str(text).strip().lower() in ("none", "null", "dropless"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"capacity factor must be > 0 or 'none', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a small MoE LM on byte-level text and log routing quality and cost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="UTF-8 text file (stories separated by blank lines); "
                   "None: generated stories. The last --val-fraction (cut at a story boundary) is held out.")
    g.add_argument("--val-data", default=None, help="separate validation text file (else split --data)")
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--num-stories", type=int, default=4000, help="generated stories when --data is None")
    g.add_argument("--tokenizer", default=None, help="accepted for the seed's scripts; the harness is "
                   "byte-level only (256 ids, loss in nats per byte): any other value is ignored with a note")
    g.add_argument("--num-workers", type=int, default=0, help="accepted, unused: batches are sliced from "
                   "the token tensor in memory (microseconds a step), so no loader workers are needed")
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=32, help="sequences per rank per step")

    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--dim", type=int, default=256)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--ffn-mult", type=int, default=4, help="expert width = ffn_mult * dim")
    g.add_argument("--tie-head", action=argparse.BooleanOptionalAction, default=False,
                   help="tie the LM head to the token embedding")

    g = p.add_argument_group("routing")
    g.add_argument("--router", default="softk", help=f"routing strategy: {', '.join(ROUTERS)} (any case, "
                   "'_' or '-'); 'dense' = dense FFN of width k*ffn_mult*dim (equal active FLOPs). The seed "
                   "used --router for a backend name: 'torch_soft' maps to --backend torch, with a note")
    g.add_argument("--strategy", default=None, help="the seed's name for --router (alias; wins over --router)")
    g.add_argument("--backend", default="torch", help="routing backend: torch | compile | triton")
    g.add_argument("--num-experts", type=int, default=8)
    g.add_argument("--top-k", type=int, default=2, help="experts per token (top1 forces 1)")
    g.add_argument("--capacity-factor", type=_cf, default=1.25,
                   help="C = ceil(cf*T*k/E) per expert and layer, T = tokens of the rank's batch; 'none' = dropless")
    g.add_argument("--renorm-after-drop", action="store_true", help="rescale a token's kept gate weights to their pre-drop sum")
    g.add_argument("--drop-policy", default="position", choices=["position", "score"])
    g.add_argument("--router-arch", default="linear", help="accepted for the seed's scripts: only 'linear' "
                   "(the core MoELayer's router is one D->E linear map; the seed's mlp routers are not ported)")
    g.add_argument("--load-balance-alpha", type=float, default=1e-2, help="Switch balance loss coefficient (per layer)")
    g.add_argument("--z-loss-beta", type=float, default=1e-3, help="router z-loss coefficient (per layer)")
    g.add_argument("--aux-free-alpha", type=float, default=0.0,
                   help="balance loss coefficient used by aux-free instead of --load-balance-alpha (its point is none)")
    g.add_argument("--aux-free-gamma", type=float, default=1e-3, help="aux-free bias step per optimizer step")
    g.add_argument("--jitter-eps", type=float, default=0.0, help="router input noise x*U(1-eps,1+eps) in training")

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr-ratio", type=float, default=0.0, help="cosine decays to lr*ratio at --max-steps")
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--max-steps", type=int, default=1000)
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay of matrices (not norms)")
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--grad-clip", type=float, default=1.0, help="<= 0: off")
    g.add_argument("--dtype", default="bf16", help="fp32 | bf16 | fp16 autocast on CUDA; CPU runs fp32")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the training step's forward (and its backward)")
    g.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead = CUDA graphs, max-autotune, ...)")
    g.add_argument("--compile-eval", action="store_true", help="also compile the evaluation forward (default eager)")
    g.add_argument("--seed", type=int, default=42)

    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval-interval", type=int, default=100, help="<= 0: evaluate at the end only")
    g.add_argument("--eval-batches", type=int, default=20, help="max validation batches per rank (0: all windows)")
    g.add_argument("--log-interval", type=int, default=0, help="steps per log record (0: = eval interval)")
    g.add_argument("--ckpt-interval", type=int, default=0, help="steps per checkpoint (0: = eval interval; <0: never)")
    g.add_argument("--outdir", default="runs/tiny")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from outdir/ckpt.pt when present")
    g.add_argument("--delete-checkpoint-at-end", action="store_true", help="remove ckpt.pt after the done record")
    g.add_argument("--quiet", action="store_true", help="no progress lines")

    g = p.add_argument_group("devices")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    g.add_argument("--distributed", action="store_true", help="DDP across the ranks torchrun starts "
                   "(also on automatically when WORLD_SIZE > 1)")
    g.add_argument("--dist-backend", default=None, help="nccl on CUDA, gloo on CPU (default); nccl on CPU becomes gloo")

    g = p.add_argument_group("throughput benchmark (--bench: no eval, no checkpoint, no log)")
    g.add_argument("--bench", action="store_true", help="time --bench-steps training steps after --bench-warmup and print tokens/s")
    g.add_argument("--bench-warmup", type=int, default=20)
    g.add_argument("--bench-steps", type=int, default=50)
    g.add_argument("--bench-repeats", type=int, default=3, help="timed blocks of --bench-steps; the median is reported")
    g.add_argument("--bench-sync-dir", default=None, help="with --bench-group N: N benchmark processes warm up "
                   "(compile) in parallel, then time one at a time (a lock file in this folder)")
    g.add_argument("--bench-group", type=int, default=1)
    g.add_argument("--bench-out", default=None, help="write the benchmark record (JSON) here")
    p.add_argument("--simulate-kill-after", type=int, default=None, help=argparse.SUPPRESS)
    return p


def normalize_args(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Map the seed's flags onto this harness; return the notes to print."""
    notes = []
    if args.strategy is not None:
        args.router = args.strategy
    router = args.router.strip().lower().replace("_", "-")
    if router.replace("-", "_") in SEED_BACKEND_NAMES and args.strategy is None:
        notes.append(f"--router {args.router} is the seed's backend name: using --backend torch with the "
                     "default strategy softk (pass --strategy or --router STRATEGY to choose one)")
        args.backend = SEED_BACKEND_NAMES[router.replace("-", "_")]
        router = "softk"
    elif router.replace("-", "_") in SEED_BACKEND_NAMES:
        args.backend = SEED_BACKEND_NAMES[router.replace("-", "_")]
    args.router = DENSE if router == DENSE else routers.canonical_strategy(router)
    if args.backend in SEED_BACKEND_NAMES:
        args.backend = SEED_BACKEND_NAMES[args.backend]
    if args.router_arch.lower() != "linear":
        raise ConfigError(f"--router-arch {args.router_arch}: only 'linear' is supported (the core MoELayer's "
                          "router is a single linear map; the seed's mlp routers are not ported)")
    if args.tokenizer not in (None, "", "byte", "bytes"):
        notes.append(f"--tokenizer {args.tokenizer} ignored: the harness is byte-level only (256 ids)")
    args.tokenizer = "byte"
    if args.router == "top1":
        args.top_k = 1
    if args.num_workers:
        notes.append("--num-workers is unused (batches are sliced in memory)")
    if args.log_interval <= 0:
        args.log_interval = args.eval_interval if args.eval_interval > 0 else args.max_steps
    if args.ckpt_interval == 0:
        args.ckpt_interval = args.eval_interval if args.eval_interval > 0 else args.max_steps
    parse_dtype(args.dtype)
    for name in ("max_steps", "batch_size", "seq_len", "layers", "dim", "heads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    return args, notes


# ----------------------------------------------------------------------------- distributed

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


def setup_distributed(args) -> DistContext:
    want = args.distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible")
    if not want:
        return DistContext(0, 1, 0, torch.device(device_name), False)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    device = torch.device("cuda", local_rank) if device_name.startswith("cuda") else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ConfigError("--distributed needs torchrun (RANK/WORLD_SIZE unset)")
        backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            backend = "gloo"
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, created)


def _all_reduce(t: torch.Tensor, ctx: DistContext, op=None) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# ----------------------------------------------------------------------------- pieces

def lr_at(it: int, args) -> float:
    """Learning rate of the it-th optimizer step (0-based): linear warm-up, then cosine to min."""
    if args.warmup_steps > 0 and it < args.warmup_steps:
        return args.lr * (it + 1) / args.warmup_steps
    span = max(1, args.max_steps - args.warmup_steps)
    progress = min(1.0, (it - args.warmup_steps) / span)
    low = args.lr * args.min_lr_ratio
    return low + 0.5 * (args.lr - low) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, args, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), **kw)


def model_config(args) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB_SIZE, seq_len=args.seq_len, layers=args.layers, dim=args.dim, heads=args.heads,
        dropout=args.dropout, ffn_mult=args.ffn_mult, num_experts=args.num_experts, top_k=args.top_k,
        router=args.router, backend=args.backend, capacity_factor=args.capacity_factor,
        renorm_after_drop=args.renorm_after_drop, drop_policy=args.drop_policy, jitter_eps=args.jitter_eps,
        tie_head=args.tie_head)


def reseed(seed: int, rank: int, step: int) -> None:
    """Dropout/jitter RNG: a function of (seed, rank, step), set at start and after each checkpoint,
    so a resumed run draws exactly what the uninterrupted run drew."""
    s = (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)
    torch.manual_seed(s)
    random.seed(s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Run:
    """Everything one training (or benchmark) process holds: model, optimizer, data, step."""

    def __init__(self, args, ctx: DistContext):
        self.args, self.ctx = args, ctx
        device = ctx.device
        dtype = parse_dtype(args.dtype)
        self.amp_dtype = dtype if device.type == "cuda" and dtype != torch.float32 else None
        self.effective_dtype = self.amp_dtype or torch.float32
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(args.seed)
        tokens = load_tokens(args.data, num_generated_stories=args.num_stories, seed=0)  # same text for every seed
        if args.val_data:
            self.train_T, self.val_T = tokens, load_tokens(args.val_data)
        else:
            self.train_T, self.val_T = split_train_val(tokens, args.val_fraction)

        self.cfg = model_config(args)
        self.model = MoETransformer(self.cfg).to(device)
        alpha = args.aux_free_alpha if self.cfg.router == "aux-free" else args.load_balance_alpha
        self.step_module = LossAndStats(self.model, alpha, args.z_loss_beta)
        self.optimizer = make_optimizer(self.model, args, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.moe_layers = self.model.moe_layers()

        fwd = self.step_module
        if args.compile:
            fwd = torch.compile(self.step_module, dynamic=False, mode=args.compile_mode)
        self.eval_forward = fwd
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            # the aux-free biases are updated identically on every rank (all-reduced counts): no
            # buffer broadcast in each forward (torch >= 2.13 renamed the option)
            sync_kw = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                       else {"broadcast_buffers": False})
            fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None,
                      gradient_as_bucket_view=True, **sync_kw)
        self.train_forward = fwd
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.tokens_per_step = args.batch_size * args.seq_len * ctx.world_size
        self.flops_per_token = self.model.flops_per_token(args.seq_len)
        k = self.cfg.top_k
        self.bytes_per_token_strict = metrics.bytes_per_token_strict(k, args.dim, self.effective_dtype.itemsize)
        self._grads_checked = False

    # one optimizer step; returns detached device tensors (no host sync)
    def train_step(self):
        args, ctx = self.args, self.ctx
        lr = lr_at(self.step, args)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_T, args.batch_size, args.seq_len, self.generator, ctx.device,
                         rank=ctx.rank, world_size=ctx.world_size)
        if args.compile:  # CUDA-graph modes: the previous step's outputs are consumed, memory reusable
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(ctx.device, self.amp_dtype):
            loss, ce, stats, counts = self.train_forward(x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if not self._grads_checked:
            missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
            if missing:
                raise RuntimeError(f"parameters without gradient after backward: {missing}")
            self._grads_checked = True
        grad_norm = torch.zeros((), device=ctx.device)
        if args.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, args.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.router == "aux-free" and self.moe_layers:
            # every layer in one batched step: a few launches per optimizer step, not a few per layer
            # (the step is launch-bound at this model size)
            counts_LE = _all_reduce(counts.clone(), ctx) if ctx.world_size > 1 else counts
            biases = [layer.bias_E for layer in self.moe_layers]
            new_LE = routers.update_aux_free_bias(torch.stack(biases), counts_LE, args.aux_free_gamma)
            torch._foreach_copy_(biases, new_LE.unbind(0))
        self.step += 1
        return ce, stats, grad_norm.detach().float(), lr

    @torch.no_grad()
    def evaluate(self) -> float:
        args, ctx = self.args, self.ctx
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # sum of loss*tokens, tokens
        max_batches = args.eval_batches if args.eval_batches > 0 else None
        for x, y in eval_batches(self.val_T, args.batch_size, args.seq_len, max_batches, ctx.device,
                                 rank=ctx.rank, world_size=ctx.world_size):
            # eager unless --compile-eval: a few forward passes do not repay a second compilation
            # (eval mode, no grad), and a short last batch would cost a third
            fwd = self.eval_forward if args.compile_eval and x.shape[0] == args.batch_size else self.step_module
            with _autocast(ctx.device, self.amp_dtype):
                _, ce, _, _ = fwd(x, y)
            total[0] += ce.double() * y.numel()
            total[1] += y.numel()
        self.model.train()
        _all_reduce(total, ctx)
        return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")

    # checkpoint
    def state(self, extra: dict) -> dict:
        return {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data_generator": self.generator.get_state(), "config": self.cfg.to_dict(), **extra,
        }

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.generator.set_state(ckpt["data_generator"].cpu())  # map_location moved it to the device
        self.step = int(ckpt["step"])

    def param_max_abs_diff_across_ranks(self) -> float:
        """max |p_rank - p_rank0| over all parameters and ranks (0.0 on one process)."""
        if self.ctx.world_size == 1:
            return 0.0
        with torch.no_grad():
            flat = torch.cat([p.detach().float().reshape(-1) for p in self.model.parameters()])
            ref = flat.clone()
            dist.broadcast(ref, 0)
            diff = (flat - ref).abs().max().reshape(1)
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_log(path: Path, max_step: int) -> list[dict]:
    """Keep the records of steps <= max_step (no done record); rewrite atomically."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line cannot happen with atomic writes, but never trust a file
            if not row.get("done") and int(row.get("step", 1 << 62)) <= max_step:
                rows.append(row)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _fmt_rate(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


# ----------------------------------------------------------------------------- train

def train(args, hooks: dict | None = None) -> dict:
    """Run (or resume) one training run; returns the done record. Callable in-process (sweeps under
    torchrun): an existing process group is reused and left open. ``hooks`` (tests):
    ``before_eval`` / ``before_checkpoint`` callables, ``kill_after_step`` int (raises SimulatedKill)."""
    hooks = hooks or {}
    ctx = setup_distributed(args)
    try:
        return _train(args, ctx, hooks)
    finally:
        if ctx.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, ctx: DistContext, hooks: dict) -> dict:
    outdir = Path(args.outdir)
    log_path, ckpt_path = outdir / LOG_NAME, outdir / CKPT_NAME
    if ctx.is_main:
        outdir.mkdir(parents=True, exist_ok=True)
    run = Run(args, ctx)
    device = ctx.device

    resumed_from, prior = None, {}
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        run.load(ckpt)
        resumed_from = run.step
        prior = ckpt.get("progress", {})
    if ctx.is_main:
        truncate_log(log_path, run.step if resumed_from is not None else 0)
        hp = {
            "args": vars(args), "model": run.cfg.to_dict(), "world_size": ctx.world_size,
            "global_batch_tokens": run.tokens_per_step, "tokens_per_rank_step": args.batch_size * args.seq_len,
            "capacity_per_expert": (routers.capacity(args.batch_size * args.seq_len, run.cfg.top_k,
                                                     args.num_experts, args.capacity_factor)
                                    if run.cfg.is_moe else None),
            "params_total": sum(p.numel() for p in run.model.parameters()),
            "params_active": run.model.active_params(), "flops_per_token": run.flops_per_token,
            "causal_safe": run.cfg.causal_safe, "tokenizer": "byte (256 ids)",
            "train_tokens": run.train_T.numel(), "val_tokens": run.val_T.numel(),
            "dtype_effective": str(run.effective_dtype).replace("torch.", ""),
            "resumed_from_step": resumed_from, "environment": environment(device),
            # > 1 when a sweep placed several runs on one GPU: their tokens/s share the device
            "gpu_shared_by_runs": int(os.environ.get("MOE_SWEEP_RUNS_PER_GPU", "1")),
            "cuda_devices": torch.cuda.device_count() if device.type == "cuda" else 0,
        }
        write_atomic(outdir / HPARAMS_NAME, json.dumps(hp, indent=2, default=str) + "\n")
    reseed(args.seed, ctx.rank, run.step)

    elapsed0 = float(prior.get("elapsed", 0.0))
    train_time_total = float(prior.get("train_time_s", 0.0))
    timed_tokens_total = float(prior.get("timed_tokens", 0.0))
    best_val = prior.get("best_val_loss")
    last_val = prior.get("last_val_loss")
    wall0 = time.perf_counter()
    L, n_stats = max(1, len(run.moe_layers)), len(STAT_NAMES)
    acc_ce = torch.zeros((), device=device)
    acc_stats = torch.zeros(len(run.moe_layers), n_stats, device=device)
    acc_gn = torch.zeros((), device=device)
    n_acc = timed = 0
    t_start = None  # timer starts after the first step of this process (compilation excluded)

    if not args.quiet and ctx.is_main:
        what = f"resumed at step {resumed_from}" if resumed_from is not None else "start"
        print(f"[train] {what}: router={run.cfg.router} E={args.num_experts} k={run.cfg.top_k} "
              f"cf={args.capacity_factor} dim={args.dim} L={args.layers} world={ctx.world_size} "
              f"device={device} dtype={run.effective_dtype} compile={args.compile} -> {outdir}", flush=True)

    while run.step < args.max_steps:
        ce, stats, gn, lr = run.train_step()
        step = run.step
        acc_ce += ce
        acc_stats += stats
        acc_gn += gn
        n_acc += 1
        if t_start is None:
            _sync(device)
            t_start = time.perf_counter()
        else:
            timed += 1
        last = step == args.max_steps
        do_eval = last or (args.eval_interval > 0 and step % args.eval_interval == 0)
        do_ckpt = args.ckpt_interval > 0 and (last or step % args.ckpt_interval == 0)
        do_log = last or do_eval or do_ckpt or step % args.log_interval == 0
        if do_log:
            _sync(device)
            seg = torch.tensor([time.perf_counter() - t_start if timed else 0.0], device=device, dtype=torch.float64)
            _all_reduce(seg, ctx, dist.ReduceOp.MAX if ctx.world_size > 1 else None)
            seg_s = float(seg)
            means = torch.cat([(acc_ce / n_acc).reshape(1), (acc_gn / n_acc).reshape(1),
                               (acc_stats / n_acc).reshape(-1)])  # per MoE layer
            _all_reduce(means, ctx)
            means = (means / ctx.world_size).tolist()
            train_loss, grad_norm, st = means[0], means[1], stats_record(means[2:], len(run.moe_layers))
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss is {train_loss} at step {step}")
            tps = timed * run.tokens_per_step / seg_s if timed and seg_s > 0 else None
            train_time_total += seg_s
            timed_tokens_total += timed * run.tokens_per_step
            val_loss = None
            if do_eval:
                if "before_eval" in hooks:
                    hooks["before_eval"]()
                val_loss = run.evaluate()
                last_val = val_loss
                best_val = val_loss if best_val is None or val_loss < best_val else best_val
            elapsed = elapsed0 + time.perf_counter() - wall0
            rec = {
                "step": step, "lr": lr, "train_loss": train_loss,
                "val_loss": val_loss, "ppl": math.exp(min(val_loss, 50.0)) if val_loss is not None else None,
                "bpc": val_loss / math.log(2) if val_loss is not None else None,
                "tokens_per_s": tps, "tokens_per_s_per_rank": tps / ctx.world_size if tps else None,
                "step_ms": 1000.0 * seg_s / timed if timed else None, "timed_steps": timed,
                **st,
                "grad_norm": grad_norm if args.grad_clip > 0 else None,
                "flops_per_token": run.flops_per_token,
                "tflops": run.flops_per_token * tps / 1e12 if tps else None,
                "eff_tflops": run.flops_per_token * tps / 1e12 if tps else None,
                "tflops_per_rank": run.flops_per_token * tps / 1e12 / ctx.world_size if tps else None,
                # per MoE layer, as the older tool (pack + combine of one layer); moe_layers says how many
                "bytes_per_token_strict": run.bytes_per_token_strict, "moe_layers": len(run.moe_layers),
                "bw_GiBps_strict": run.bytes_per_token_strict * tps / 2**30 if tps else None,
                "bw_GiBps_strict_all_layers": (run.bytes_per_token_strict * len(run.moe_layers) * tps / 2**30
                                               if tps else None),
                "tokens_seen": step * run.tokens_per_step, "elapsed": elapsed, "train_time_s": train_time_total,
                "router": run.cfg.router, "routing_strategy": run.cfg.router,
                "strategy": run.cfg.router.replace("-", "_"), "backend": args.backend,
                "num_experts": args.num_experts, "top_k": run.cfg.top_k, "capacity_factor": args.capacity_factor,
                "causal_safe": run.cfg.causal_safe, "world_size": ctx.world_size, "compile": bool(args.compile),
                "dtype": str(run.effective_dtype).replace("torch.", ""),
            }
            if device.type == "cuda":
                rec["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
            if ctx.is_main:
                with open(log_path, "a") as f:  # one whole line per write; resume cuts the file back
                    f.write(json.dumps(rec) + "\n")
                if not args.quiet:
                    val_txt = f" | val {val_loss:.4f} ppl {rec['ppl']:.3f}" if val_loss is not None else ""
                    drop = f" | drop {st['drop_rate']:.3f} cv {st['load_cv']:.3f}" if run.moe_layers else ""
                    print(f"step {step:>6}/{args.max_steps} | loss {train_loss:.4f}{val_txt} | "
                          f"{_fmt_rate(tps)} tok/s{drop} | lr {lr:.2e} | {elapsed:.1f}s", flush=True)
            if do_ckpt:
                if "before_checkpoint" in hooks:
                    hooks["before_checkpoint"]()
                progress = {"elapsed": elapsed0 + time.perf_counter() - wall0, "train_time_s": train_time_total,
                            "timed_tokens": timed_tokens_total, "best_val_loss": best_val, "last_val_loss": last_val}
                if ctx.is_main:
                    save_checkpoint(ckpt_path, run.state({"progress": progress, "args": vars(args)}))
                if ctx.world_size > 1:
                    dist.barrier()
                reseed(args.seed, ctx.rank, step)
            if hooks.get("kill_after_step") == step:
                raise SimulatedKill(f"simulated kill after step {step}")
            if args.simulate_kill_after == step:
                sys.stdout.flush()
                os._exit(137)
            acc_ce.zero_()
            acc_stats.zero_()
            acc_gn.zero_()
            n_acc = timed = 0
            _sync(device)
            t_start = time.perf_counter()

    done = {
        "done": True, "step": run.step, "steps": args.max_steps, "tokens_seen": run.step * run.tokens_per_step,
        "final_val_loss": last_val, "final_ppl": math.exp(min(last_val, 50.0)) if last_val is not None else None,
        "best_val_loss": best_val, "elapsed": elapsed0 + time.perf_counter() - wall0,
        "train_time_s": train_time_total,
        "tokens_per_s": timed_tokens_total / train_time_total if train_time_total > 0 else None,
        "router": run.cfg.router, "causal_safe": run.cfg.causal_safe, "world_size": ctx.world_size,
        "param_max_abs_diff_across_ranks": run.param_max_abs_diff_across_ranks(),
    }
    if ctx.is_main:
        with open(log_path, "a") as f:
            f.write(json.dumps(done) + "\n")
        if args.delete_checkpoint_at_end and ckpt_path.exists():
            ckpt_path.unlink()
        if not args.quiet:
            print(json.dumps(done), flush=True)
    return done


# ----------------------------------------------------------------------------- benchmark

def bench(args) -> dict:
    """Tokens/s of the training step (the same ``Run.train_step``) after warm-up; no eval/ckpt/log."""
    ctx = setup_distributed(args)
    try:
        run = Run(args, ctx)
        device = ctx.device
        for _ in range(args.bench_warmup):
            run.train_step()
        _sync(device)
        lock = None
        if args.bench_sync_dir and ctx.is_main:
            sync_dir = Path(args.bench_sync_dir)
            sync_dir.mkdir(parents=True, exist_ok=True)
            (sync_dir / f"ready.{os.getpid()}").touch()
            deadline = time.time() + 300  # a partner that died does not hold this one for ever
            while len(list(sync_dir.glob("ready.*"))) < args.bench_group and time.time() < deadline:
                time.sleep(0.5)
            lock = open(sync_dir / "lock", "w")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if ctx.world_size > 1:
            dist.barrier()
        times = []
        for _ in range(args.bench_repeats):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.bench_steps):
                run.train_step()
            _sync(device)
            seg = torch.tensor([time.perf_counter() - t0], device=device, dtype=torch.float64)
            _all_reduce(seg, ctx, dist.ReduceOp.MAX if ctx.world_size > 1 else None)
            times.append(float(seg))
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        rates = sorted(args.bench_steps * run.tokens_per_step / t for t in times)
        tps = rates[len(rates) // 2]
        rec = {
            "bench": True, "router": run.cfg.router, "backend": args.backend, "compile": bool(args.compile),
            "compile_mode": args.compile_mode if args.compile else None,
            "num_experts": args.num_experts, "top_k": run.cfg.top_k, "capacity_factor": args.capacity_factor,
            "dim": args.dim, "layers": args.layers, "heads": args.heads, "seq_len": args.seq_len,
            "batch_size_per_rank": args.batch_size, "world_size": ctx.world_size,
            "tokens_per_step": run.tokens_per_step, "warmup_steps": args.bench_warmup,
            "timed_steps": args.bench_steps, "repeats": args.bench_repeats,
            "tokens_per_s": tps, "tokens_per_s_all": rates, "tokens_per_s_per_rank": tps / ctx.world_size,
            "step_ms": 1000.0 * run.tokens_per_step / tps, "flops_per_token": run.flops_per_token,
            "tflops": run.flops_per_token * tps / 1e12,
            "dtype": str(run.effective_dtype).replace("torch.", ""),
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "causal_safe": run.cfg.causal_safe, **environment(device),
        }
        if ctx.is_main:
            print(f"[bench] {rec['router']} E={rec['num_experts']} k={rec['top_k']} cf={rec['capacity_factor']} "
                  f"compile={rec['compile']} world={ctx.world_size} on {rec['device_name']}: "
                  f"{tps:,.0f} tokens/s ({rec['step_ms']:.2f} ms/step, {rec['tflops']:.1f} TFLOP/s)", flush=True)
            print(json.dumps(rec), flush=True)
            if args.bench_out:
                write_atomic(args.bench_out, json.dumps(rec, indent=2) + "\n")
        return rec
    finally:
        if ctx.created_group and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args, notes = normalize_args(args)
    except ConfigError as e:
        parser.exit(2, f"train.py: error: {e}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    try:
        if args.bench:
            bench(args)
        else:
            train(args)
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
