"""The training loop (``train``) and the throughput benchmark (``bench``).

Metric definitions (DESIGN section 4):
- ``train_loss``: mean LM cross-entropy (nats per byte) over every step of the interval.
- ``tokens_per_s``: global tokens of the timed training steps / their wall time. Evaluation and
  checkpointing are outside the timed region (the device is synchronised at each log point only),
  and so is the first step of each process (compilation). ``tokens_per_s_per_rank`` = / world size.
- ``flops_per_token``: training FLOPs from ACTIVE parameters (experts k/E), 6*N_active + 12*L*dim*S;
  ``tflops`` (alias ``eff_tflops``) = flops_per_token * tokens_per_s / 1e12.
- ``bytes_per_token_strict``: forward pack+combine bytes of ONE MoE layer, (2+2k)*dim*dtype_bytes
  (the older tool's convention); ``moe_layers`` layers; ``bw_GiBps_strict`` = bytes_per_token_strict
  * tokens_per_s / 2^30 (per layer), ``bw_GiBps_strict_all_layers`` = that times ``moe_layers``.
- routing statistics (``model.STAT_NAMES``: both conventions where the older tool's names collide,
  ``load_cv``/``load_cv_kept``, ``gate_entropy``/``gate_entropy_selected``) are means over the steps
  of the interval, across ranks: ``<name>_per_layer`` per MoE layer, ``<name>`` their mean.
- ``seed_semantics``: the older tool's routing factors of the run; ``preset``: ``seed`` when its
  training recipe was used (``--seed-semantics`` with ``recipe``), else None.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

import moe_routing_bench as mrb
from train.checkpoint import (HPARAMS_NAME, LOG_NAME, RunLock, load_checkpoint, remove_checkpoints,
                              save_checkpoint, truncate_log)
from train.config import TrainConfig
from train.model import STAT_NAMES, stats_record
from train.trainer import DistContext, Trainer, all_reduce, reseed, setup_distributed, sync

Event = Callable[[str, int], None]  # (event, step): "eval" and "checkpoint" before, "log" after


@dataclass
class Progress:
    """What a resumed run carries over from its checkpoint (plain numbers)."""
    elapsed: float = 0.0
    train_time_s: float = 0.0
    timed_tokens: float = 0.0
    best_val_loss: float | None = None
    last_val_loss: float | None = None

    def add_val(self, loss: float) -> None:
        self.last_val_loss = loss
        if self.best_val_loss is None or loss < self.best_val_loss:
            self.best_val_loss = loss


class Meter:
    """Per-interval sums on the device (no host sync per step) and the timed steps' wall time.
    The first step of a process is not timed (compilation)."""

    def __init__(self, num_layers: int, device: torch.device):
        self.device = device
        self.ce = torch.zeros((), device=device)
        self.gn = torch.zeros((), device=device)
        self.stats = torch.zeros(num_layers, len(STAT_NAMES), device=device)
        self.n = self.timed = 0
        self.t0: float | None = None

    def add(self, ce, stats, gn) -> None:
        self.ce += ce
        self.stats += stats
        self.gn += gn
        self.n += 1
        if self.t0 is None:
            sync(self.device)
            self.t0 = time.perf_counter()
        else:
            self.timed += 1

    def collect(self, ctx: DistContext) -> tuple[float, dict]:
        """(seconds of the timed steps, slowest rank; means over steps and ranks: train_loss,
        grad_norm and the routing statistics of ``model.stats_record``)."""
        sync(self.device)
        seg = torch.tensor([time.perf_counter() - self.t0 if self.timed else 0.0], device=self.device,
                           dtype=torch.float64)
        all_reduce(seg, ctx, dist.ReduceOp.MAX if ctx.world_size > 1 else None)
        per_layer = (self.stats / self.n).reshape(-1)
        means = all_reduce(torch.cat([(self.ce / self.n).reshape(1), (self.gn / self.n).reshape(1), per_layer]), ctx)
        means = (means / ctx.world_size).tolist()
        stats = stats_record(means[2:], self.stats.shape[0])
        return float(seg), {"train_loss": means[0], "grad_norm": means[1], **stats}

    def reset(self) -> None:
        for t in (self.ce, self.gn, self.stats):
            t.zero_()
        self.n = self.timed = 0
        sync(self.device)
        self.t0 = time.perf_counter()


def train(cfg: TrainConfig, on_event: Event | None = None) -> dict:
    """Run (or resume) one training run; returns the done record. Rank 0 holds the run folder's
    lock. Callable in-process (sweeps under torchrun): an existing process group is reused."""
    r = cfg.run
    ctx = setup_distributed(r.device, r.distributed, r.dist_backend)
    try:
        with RunLock(r.outdir) if ctx.is_main else nullcontext():
            return _train(cfg, ctx, on_event or (lambda event, step: None))
    finally:
        if ctx.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ctx: DistContext, on_event: Event) -> dict:
    r, o = cfg.run, cfg.optim
    outdir = Path(r.outdir)
    log_path = outdir / LOG_NAME
    t = Trainer(cfg, ctx)
    state = load_checkpoint(outdir, ctx.device) if r.resume else None
    progress = Progress(**state["progress"]) if state else Progress()
    if state:
        t.load(state)
    resumed_from = t.step if state else None
    if ctx.is_main:
        truncate_log(log_path, t.step)
        mrb.write_atomic(outdir / HPARAMS_NAME, json.dumps(hparams(t, resumed_from), indent=2, default=str) + "\n")
    reseed(o.seed, ctx.rank, t.step)
    announce(t, resumed_from)
    wall0, elapsed0 = time.perf_counter(), progress.elapsed
    meter = Meter(len(t.moe_layers), ctx.device)

    while t.step < o.max_steps:
        ce, stats, grad_norm, lr = t.train_step()
        meter.add(ce, stats, grad_norm)
        step, last = t.step, t.step == o.max_steps
        do_eval = last or (r.eval_interval > 0 and step % r.eval_interval == 0)
        do_ckpt = r.ckpt_interval > 0 and (last or step % r.ckpt_interval == 0)
        if not (do_eval or do_ckpt or step % r.log_interval == 0):
            continue
        seconds, means = meter.collect(ctx)
        if not math.isfinite(means["train_loss"]):
            raise FloatingPointError(f"training loss is {means['train_loss']} at step {step}")
        progress.train_time_s += seconds
        progress.timed_tokens += meter.timed * t.tokens_per_step
        val_loss = None
        if do_eval:
            on_event("eval", step)
            val_loss = t.evaluate()
            progress.add_val(val_loss)
        progress.elapsed = elapsed0 + time.perf_counter() - wall0
        rec = log_record(t, step, lr, means, val_loss, seconds, meter.timed, progress)
        if ctx.is_main:
            mrb.append_jsonl(log_path, [rec])
            print_progress(t, rec)
        on_event("log", step)
        if do_ckpt:
            on_event("checkpoint", step)
            progress.elapsed = elapsed0 + time.perf_counter() - wall0
            state = t.state(asdict(progress))  # on every rank: --expert-parallel gathers the expert shards
            if ctx.is_main:
                save_checkpoint(outdir, state)
            if ctx.world_size > 1:
                dist.barrier()
            reseed(o.seed, ctx.rank, step)
        meter.reset()

    progress.elapsed = elapsed0 + time.perf_counter() - wall0
    done = done_record(t, progress)
    if ctx.is_main:
        mrb.append_jsonl(log_path, [done])
        if r.delete_checkpoint_at_end:
            remove_checkpoints(outdir)
        if not r.quiet:
            print(json.dumps(done), flush=True)
    return done


# ----------------------------------------------------------------------------- records

def _rate(value: float | None, scale: float) -> float | None:
    return value * scale if value else None


def log_record(t: Trainer, step: int, lr: float, means: dict, val_loss: float | None, seconds: float,
               timed: int, progress: Progress) -> dict:
    """One interval's record (train_log.jsonl); metric definitions in this module's docstring."""
    cfg, mc, world = t.cfg, t.model_cfg, t.ctx.world_size
    tps = timed * t.tokens_per_step / seconds if timed and seconds > 0 else None
    bytes_layer = t.bytes_per_token_strict
    rec = {
        "step": step, "lr": lr, "train_loss": means["train_loss"], "val_loss": val_loss,
        "ppl": math.exp(min(val_loss, 50.0)) if val_loss is not None else None,
        "bpc": val_loss / math.log(2) if val_loss is not None else None,
        "tokens_per_s": tps, "tokens_per_s_per_rank": _rate(tps, 1 / world),
        "step_ms": 1000.0 * seconds / timed if timed else None, "timed_steps": timed,
        **{k: v for k, v in means.items() if k not in ("train_loss", "grad_norm")},
        "grad_norm": means["grad_norm"] if cfg.optim.grad_clip > 0 else None,
        "flops_per_token": t.flops_per_token, "tflops": _rate(tps, t.flops_per_token / 1e12),
        "eff_tflops": _rate(tps, t.flops_per_token / 1e12),
        "tflops_per_rank": _rate(tps, t.flops_per_token / 1e12 / world),
        "bytes_per_token_strict": bytes_layer, "moe_layers": len(t.moe_layers),
        "bw_GiBps_strict": _rate(tps, bytes_layer / 2**30),
        "bw_GiBps_strict_all_layers": _rate(tps, bytes_layer * len(t.moe_layers) / 2**30),
        "tokens_seen": step * t.tokens_per_step, "elapsed": progress.elapsed, "train_time_s": progress.train_time_s,
        "router": mc.router, "routing_strategy": mc.router, "strategy": mc.router.replace("-", "_"),
        "backend": mc.backend, "num_experts": mc.num_experts, "top_k": mc.top_k,
        "capacity_factor": mc.capacity_factor, "capacity_group_tokens": mc.capacity_group_tokens,
        "seed_semantics": list(mc.seed_semantics), "preset": cfg.recipe, "causal_safe": mc.causal_safe,
        "world_size": world, "expert_parallel": cfg.run.expert_parallel,
        "compile": cfg.optim.compile, "dtype": str(t.effective_dtype).replace("torch.", ""),
    }
    if t.ctx.device.type == "cuda":
        rec["peak_mem_GiB"] = torch.cuda.max_memory_allocated(t.ctx.device) / 2**30
    return rec


def done_record(t: Trainer, p: Progress) -> dict:
    last = p.last_val_loss
    return {
        "done": True, "step": t.step, "steps": t.cfg.optim.max_steps, "tokens_seen": t.step * t.tokens_per_step,
        "final_val_loss": last, "final_ppl": math.exp(min(last, 50.0)) if last is not None else None,
        "best_val_loss": p.best_val_loss,
        "best_ppl": math.exp(min(p.best_val_loss, 50.0)) if p.best_val_loss is not None else None,
        "elapsed": p.elapsed, "train_time_s": p.train_time_s,
        "tokens_per_s": p.timed_tokens / p.train_time_s if p.train_time_s > 0 else None,
        "router": t.model_cfg.router, "causal_safe": t.model_cfg.causal_safe, "world_size": t.ctx.world_size,
        "param_max_abs_diff_across_ranks": t.param_max_abs_diff_across_ranks(),
    }


def hparams(t: Trainer, resumed_from: int | None) -> dict:
    cfg, mc, dev = t.cfg, t.model_cfg, t.ctx.device
    group = mc.capacity_group_tokens or cfg.run.batch_size * cfg.model.seq_len
    return {
        "args": cfg.flat(), "model": mc.to_dict(), "world_size": t.ctx.world_size,
        "global_batch_tokens": t.tokens_per_step, "tokens_per_rank_step": cfg.run.batch_size * cfg.model.seq_len,
        "capacity_group_tokens": group,
        "capacity_per_expert": mrb.capacity(group, mc.top_k, mc.num_experts, mc.capacity_factor) if mc.is_moe else None,
        "params_total": t.params_total, "params_active": t.params_active,  # the unsharded model's
        "flops_per_token": t.flops_per_token, "causal_safe": mc.causal_safe, "tokenizer": "byte (256 ids)",
        "train_tokens": t.train_T.numel(), "val_tokens": t.val_T.numel(),
        "dtype_effective": str(t.effective_dtype).replace("torch.", ""), "resumed_from_step": resumed_from,
        "environment": mrb.environment(dev),
        # > 1 when a sweep placed several runs on one GPU: their tokens/s share the device
        "gpu_shared_by_runs": int(os.environ.get("MOE_SWEEP_RUNS_PER_GPU", "1")),
        "cuda_devices": torch.cuda.device_count() if dev.type == "cuda" else 0,
    }


def announce(t: Trainer, resumed_from: int | None) -> None:
    cfg, mc = t.cfg, t.model_cfg
    if cfg.run.quiet or not t.ctx.is_main:
        return
    what = f"resumed at step {resumed_from}" if resumed_from is not None else "start"
    print(f"[train] {what}: router={mc.router} E={mc.num_experts} k={mc.top_k} cf={mc.capacity_factor} "
          f"dim={mc.dim} L={mc.layers} world={t.ctx.world_size} ep={cfg.run.expert_parallel} device={t.ctx.device} dtype={t.effective_dtype} "
          f"compile={cfg.optim.compile} -> {cfg.run.outdir}", flush=True)


def print_progress(t: Trainer, rec: dict) -> None:
    if t.cfg.run.quiet:
        return
    val = f" | val {rec['val_loss']:.4f} ppl {rec['ppl']:.3f}" if rec["val_loss"] is not None else ""
    drop = f" | drop {rec['drop_rate']:.3f} cv {rec['load_cv']:.3f}" if t.moe_layers else ""
    tps = "-" if rec["tokens_per_s"] is None else f"{rec['tokens_per_s']:,.0f}"
    print(f"step {rec['step']:>6}/{t.cfg.optim.max_steps} | loss {rec['train_loss']:.4f}{val} | {tps} tok/s"
          f"{drop} | lr {rec['lr']:.2e} | {rec['elapsed']:.1f}s", flush=True)


# ----------------------------------------------------------------------------- benchmark

def bench(cfg: TrainConfig) -> dict:
    """Tokens/s of the training step (the same ``Trainer.train_step``) after warm-up; no eval/ckpt/log."""
    b, r = cfg.bench, cfg.run
    ctx = setup_distributed(r.device, r.distributed, r.dist_backend)
    try:
        t = Trainer(cfg, ctx)
        device = ctx.device
        for _ in range(b.bench_warmup):
            t.train_step()
        locks = []

        def ready():  # after the warm-up (measure synchronises first): partners, timing lock, all ranks
            if b.bench_sync_dir and ctx.is_main:
                locks.append(wait_for_partners(b.bench_sync_dir, b.bench_group))
            if ctx.world_size > 1:
                dist.barrier()

        def block():
            for _ in range(b.bench_steps):
                t.train_step()

        # one sample per block of timed steps (CUDA events, or perf_counter on CPU), then each block's slowest rank
        timing = mrb.measure(block, device, warmup=0, iters=b.bench_repeats, flush_l2=False, warmup_s=None,
                             after_warmup=ready)
        seg = torch.tensor(timing.samples_s, device=device, dtype=torch.float64)
        times = all_reduce(seg, ctx, dist.ReduceOp.MAX if ctx.world_size > 1 else None).tolist()
        lock = locks[0] if locks else None
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        rates = sorted(b.bench_steps * t.tokens_per_step / s for s in times)
        tps = rates[len(rates) // 2]
        mc, o = t.model_cfg, cfg.optim
        rec = {
            "bench": True, "router": mc.router, "backend": mc.backend, "compile": o.compile,
            "compile_mode": o.compile_mode if o.compile else None, "num_experts": mc.num_experts,
            "top_k": mc.top_k, "capacity_factor": mc.capacity_factor, "dim": mc.dim, "layers": mc.layers,
            "heads": mc.heads, "seq_len": mc.seq_len, "batch_size_per_rank": r.batch_size,
            "world_size": ctx.world_size, "expert_parallel": cfg.run.expert_parallel, "tokens_per_step": t.tokens_per_step, "warmup_steps": b.bench_warmup,
            "timed_steps": b.bench_steps, "repeats": b.bench_repeats, "tokens_per_s": tps,
            "tokens_per_s_all": rates, "tokens_per_s_per_rank": tps / ctx.world_size,
            "step_ms": 1000.0 * t.tokens_per_step / tps, "flops_per_token": t.flops_per_token,
            "tflops": t.flops_per_token * tps / 1e12, "dtype": str(t.effective_dtype).replace("torch.", ""),
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "causal_safe": mc.causal_safe, **mrb.environment(device),
        }
        if ctx.is_main:
            print(f"[bench] {rec['router']} E={rec['num_experts']} k={rec['top_k']} cf={rec['capacity_factor']} "
                  f"compile={rec['compile']} world={ctx.world_size} on {rec['device_name']}: "
                  f"{tps:,.0f} tokens/s ({rec['step_ms']:.2f} ms/step, {rec['tflops']:.1f} TFLOP/s)", flush=True)
            print(json.dumps(rec), flush=True)
            if b.bench_out:
                mrb.write_atomic(b.bench_out, json.dumps(rec, indent=2) + "\n")
        return rec
    finally:
        if ctx.created_group and dist.is_initialized():
            dist.destroy_process_group()


def wait_for_partners(sync_dir: str, group: int):
    """Announce this process ready, wait (at most 300 s) for ``group`` partners, then take the
    timing lock: processes compile side by side but are timed one at a time."""
    folder = Path(sync_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{os.getpid()}").touch()
    deadline = time.time() + 300
    while len(list(folder.glob("ready.*"))) < group and time.time() < deadline:
        time.sleep(0.5)
    lock = open(folder / "lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock
