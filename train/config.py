"""Training configuration: four dataclasses (model, MoE, optimisation, run), the command-line flags
generated from them once, presets, and the seed's flag aliases.

    cfg = parse_train_args(["--router", "top1", "--preset", "seed"])   # -> TrainConfig
    cfg.model.dim, cfg.moe.router, cfg.optim.lr, cfg.run.outdir

Every field declares its flag (``--field-name``, plus seed aliases), help text and default in one
place (``opt(...)``); ``add_flags`` turns a dataclass into an argparse group, and train.py, sweep.py
and bench_throughput.py all build their parsers from the same classes.

Presets (``--preset NAME``) change defaults; a flag typed on the command line always wins:
- ``seed``: the older tool's published recipe and all its routing semantics (``--seed-semantics all``),
  and its router grid (see ``RECIPE``, ``BUDGET``);
- ``seed-budget``: only the older tool's token budget (batch, sequence, steps, capacity groups,
  evaluation interval) with this project's own semantics: "ours at the same budget";
- ``cpu`` / ``gpu``: a sweep sized for the machine (``auto``, the sweep's default, picks one).

``--seed-semantics`` selects factors of the older tool one by one: ``all``, ``none``, or a comma
list of names from ``moe_routing_bench.SEED_FACTORS`` plus ``recipe`` (the training recipe of
``RECIPE``); ``-name`` removes a factor (``all,-hash_key``: every factor but the hash key).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import moe_routing_bench as mrb

SEED_BACKEND_NAMES = mrb.SEED_BACKEND_NAMES  # the seed's backend names (its --router values) -> ours
RECIPE_FACTOR = "recipe"


def opt(default: Any, help: str, *, aliases: tuple[str, ...] = (), type=None, choices=None,
        flag: str | None = None) -> Any:
    """A config field with its flag: ``--name-with-dashes`` (or ``flag``), ``aliases`` (the seed's
    spellings), ``type`` (parser of the text, default: the type of ``default``), ``choices``."""
    meta = {"help": help, "aliases": aliases, "type": type, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def capacity_factor_arg(text: str) -> float | None:
    """Capacity factor as typed: a number > 0, or none/null/dropless (no capacity)."""
    if str(text).strip().lower() in ("none", "null", "dropless"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"capacity factor must be a number > 0 or 'none', got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"capacity factor must be > 0 or 'none', got {text!r}")
    return value


def optional_float(text: str) -> float | None:
    return None if str(text).strip().lower() in ("none", "null", "") else float(text)


def optional_int(text: str) -> int | None:
    return None if str(text).strip().lower() in ("none", "null", "", "0") else int(text)


# ----------------------------------------------------------------------------- the four sections

@dataclass
class ModelOptions:
    """The transformer around the MoE layers (byte tokens, 256 ids)."""
    seq_len: int = opt(256, "tokens per sequence")
    layers: int = opt(2, "transformer blocks")
    dim: int = opt(256, "model width")
    heads: int = opt(4, "attention heads")
    dropout: float = opt(0.1, "dropout after embeddings, attention and FFN")
    ffn_mult: int = opt(4, "expert width = ffn_mult * dim")
    tie_head: bool = opt(False, "tie the LM head to the token embedding")
    attention: str = opt("sdpa", "sdpa: causal F.scaled_dot_product_attention, no biases; mha: "
                         "nn.MultiheadAttention with biases and its own init (the older tool's)",
                         choices=("sdpa", "mha"))


@dataclass
class MoEOptions:
    """Routing: strategy, experts, capacity, losses, and the older tool's semantics."""
    router: str = opt("softk", "routing strategy: top1, topk-hard, softk, hash, expert-choice, aux-free "
                      "(any case, '_' or '-'), or dense (GELU FFN of width k*ffn_mult*dim, equal active "
                      "FLOPs). The seed used --router for a backend name: 'torch_soft' means --backend torch")
    strategy: str | None = opt(None, "the seed's name for --router (alias; wins over --router)", type=str)
    backend: str = opt("torch", "routing backend: torch | compile | triton")
    num_experts: int = opt(8, "experts per MoE layer")
    top_k: int = opt(2, "experts per token (top1 forces 1)")
    capacity_factor: float | None = opt(1.25, "C = ceil(cf*T*k/E) per expert and layer, T = tokens of a "
                                        "capacity group; 'none' = dropless", type=capacity_factor_arg)
    capacity_group_tokens: int | None = opt(None, "route each group of this many consecutive tokens "
                                            "separately (capacity per group): 8192 reproduces 4 ranks x 32 x "
                                            "256 on one process; none: the whole batch of the rank",
                                            type=optional_int)
    renorm_after_drop: bool = opt(False, "rescale a token's kept gate weights to their pre-drop sum")
    drop_policy: str = opt("position", "which assignments an over-full expert drops",
                           choices=("position", "score"))
    router_arch: str = opt("linear", "accepted for the seed's scripts: only 'linear' (the MoE layer's "
                           "router is one D->E linear map; the seed's mlp routers are not ported)")
    router_bias: bool = opt(False, "router linear map with a bias (the older tool's)")
    router_init_std: float | None = opt(None, "router weight init std (none: the layer's default "
                                        "0.1/sqrt(dim); the seed recipe: dim**-0.5)", type=optional_float)
    load_balance_alpha: float = opt(1e-2, "balance loss coefficient (per layer)")
    z_loss_beta: float = opt(1e-3, "router z-loss coefficient (per layer)")
    aux_free_alpha: float = opt(0.0, "balance loss coefficient used by aux-free instead of "
                                "--load-balance-alpha (its point is none)")
    aux_free_gamma: float = opt(1e-3, "aux-free bias step per optimizer step")
    jitter_eps: float = opt(0.0, "router input noise x*U(1-eps,1+eps) in training")
    seed_semantics: str = opt("none", "the older tool's semantics: all | none | comma list of factors "
                              "(moe_routing_bench.SEED_FACTORS and 'recipe'); '-name' removes one")


@dataclass
class OptimOptions:
    """Optimiser, schedule, precision, compilation."""
    lr: float = opt(3e-4, "peak learning rate")
    min_lr_ratio: float = opt(0.0, "cosine decays to lr*ratio at --max-steps")
    warmup_steps: int = opt(100, "linear warm-up steps")
    max_steps: int = opt(1000, "optimizer steps")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    decay_all: bool = opt(False, "decay every parameter (the older tool's); default: matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient norm clip; <= 0: off")
    dtype: str = opt("bf16", "fp32 | bf16 | fp16 autocast on CUDA; CPU runs fp32")
    compile: bool = opt(False, "torch.compile the training step's forward (and its backward)")
    compile_mode: str | None = opt(None, "torch.compile mode (default, reduce-overhead = CUDA graphs, "
                                   "max-autotune, ...)", type=str)
    compile_eval: bool = opt(False, "also compile the evaluation forward (default eager)")
    seed: int = opt(42, "random seed (model init, data order, dropout)")


@dataclass
class RunOptions:
    """Data, evaluation, logging, checkpoints, devices."""
    data: str | None = opt(None, "UTF-8 text file (stories separated by blank lines), e.g. the TinyStories "
                           "export of train/export_tinystories.py; none: stories generated by the project. "
                           "The last --val-fraction (cut at a story boundary) is held out", type=str)
    val_data: str | None = opt(None, "separate validation text file (else split --data)", type=str)
    val_fraction: float = opt(0.1, "held-out tail of the data")
    num_stories: int = opt(4000, "generated stories when --data is none")
    tokenizer: str | None = opt(None, "accepted for the seed's scripts; the harness is byte-level only "
                                "(256 ids, loss in nats per byte): any other value is ignored with a note", type=str)
    num_workers: int = opt(0, "accepted, unused: batches are sliced from the token tensor in memory "
                           "(microseconds a step), so no loader workers are needed")
    batch_size: int = opt(32, "sequences per rank per step", aliases=("--batch-per-gpu",))
    eval_interval: int = opt(100, "steps between evaluations; <= 0: at the end only")
    eval_batches: int = opt(20, "max validation batches per rank; 0: every window")
    eval_stride: int = opt(0, "tokens between validation windows; 0: seq_len (non-overlapping: every "
                           "target scored once; the same expectation as stride-1 windows)")
    log_interval: int = opt(0, "steps per log record; 0: the eval interval")
    ckpt_interval: int = opt(0, "steps per checkpoint; 0: the eval interval; < 0: never")
    outdir: str = opt("runs/tiny", "run folder (runs/ is git-ignored): train_log.jsonl, hparams.json, "
                      "ckpt.pt (+ .sha256, previous kept as ckpt.prev.pt)")
    resume: bool = opt(True, "continue from outdir/ckpt.pt when present")
    delete_checkpoint_at_end: bool = opt(False, "remove the checkpoints after the done record")
    quiet: bool = opt(False, "no progress lines")
    device: str | None = opt(None, "cuda | cpu (default: cuda if available)", type=str)
    distributed: bool = opt(False, "DDP across the ranks torchrun starts (on automatically when WORLD_SIZE > 1)")
    dist_backend: str | None = opt(None, "nccl on CUDA, gloo on CPU (default); nccl on CPU becomes gloo", type=str)
    expert_parallel: int = opt(1, "shard each MoE layer's experts over this many ranks (EP x DP under "
                               "torchrun: EP groups of N consecutive ranks; the world size and --num-experts "
                               "multiples of N); 1: every rank holds every expert (plain DDP)")


@dataclass
class BenchOptions:
    """Throughput benchmark (train.py --bench, bench_throughput.py): no eval, checkpoint or log."""
    bench: bool = opt(False, "time --bench-steps training steps after --bench-warmup and print tokens/s")
    bench_warmup: int = opt(20, "untimed steps first (compilation)")
    bench_steps: int = opt(50, "steps per timed block")
    bench_repeats: int = opt(3, "timed blocks; the median is reported")
    bench_sync_dir: str | None = opt(None, "with --bench-group N: N benchmark processes warm up in parallel, "
                                     "then time one at a time (a lock file in this folder)", type=str)
    bench_group: int = opt(1, "processes sharing --bench-sync-dir")
    bench_out: str | None = opt(None, "write the benchmark record (JSON) here", type=str)


@dataclass
class TrainConfig:
    model: ModelOptions = field(default_factory=ModelOptions)
    moe: MoEOptions = field(default_factory=MoEOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    run: RunOptions = field(default_factory=RunOptions)
    bench: BenchOptions = field(default_factory=BenchOptions)
    preset: str | None = None
    semantics: tuple[str, ...] = ()  # resolved --seed-semantics (routing factors and 'recipe')

    def flat(self) -> dict:
        """Every setting by field name (hparams.json's "args": one flat dict, as the seed's).
        ``preset`` is the recipe used (``seed`` or None), ``preset_name`` the --preset typed."""
        out = {"preset": self.recipe, "preset_name": self.preset, "semantics": list(self.semantics)}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    @property
    def recipe(self) -> str | None:
        """"seed" when the older tool's training recipe is on, else None (this project's)."""
        return "seed" if RECIPE_FACTOR in self.semantics else None

    @property
    def routing_semantics(self) -> tuple[str, ...]:
        """The factors the MoE layer implements (recipe is the harness's)."""
        return tuple(f for f in self.semantics if f != RECIPE_FACTOR)


SECTIONS = {"model": ModelOptions, "moe": MoEOptions, "optim": OptimOptions, "run": RunOptions, "bench": BenchOptions}
TRAIN_SECTIONS = ("model", "moe", "optim", "run")


# ----------------------------------------------------------------------------- presets

BUDGET = {  # the older tool's token budget: 4 ranks x 32 x 256 tokens, capacity per rank, 1200 steps
    "batch_size": 128, "seq_len": 256, "max_steps": 1200, "capacity_group_tokens": 8192,
    "eval_interval": 200, "eval_batches": 0,
}
RECIPE = {  # the rest of its published sweep's recipe
    **BUDGET, "lr": 3e-4, "warmup_steps": 50, "min_lr_ratio": 0.0, "beta1": 0.9, "beta2": 0.999,
    "weight_decay": 0.01, "decay_all": True, "grad_clip": 1.0, "dropout": 0.1, "dtype": "bf16",
    "num_experts": 8, "top_k": 2, "seed": 17, "layers": 2, "dim": 256, "heads": 4, "ffn_mult": 4,
    "attention": "mha", "renorm_after_drop": True, "router_bias": True, "load_balance_alpha": 1e-2,
    "z_loss_beta": 0.0, "tie_head": False,
}
SEED_GRID = {"router_list": "top1,topk-hard,softk,hash,expert-choice", "num_experts_list": "8",
             "topk_list": "2", "capacity_factors": "1.0,1.25", "seeds": "17,18,19"}
SWEEP_SIZES = {
    # a few minutes in all on a 2-core CPU, one process or torchrun --nproc_per_node=2
    "cpu": {"router_list": "softk,top1,aux-free", "num_experts_list": "4", "topk_list": "2",
            "capacity_factors": "1.25", "seeds": "17", "dim": 64, "layers": 2, "heads": 2, "seq_len": 64,
            "batch_size": 8, "max_steps": 300, "eval_interval": 100, "eval_batches": 8, "lr": 3e-3,
            "warmup_steps": 20, "num_stories": 2000, "dtype": "fp32"},
    # the README's documented GPU sweep
    "gpu": {"router_list": "top1,topk-hard,softk,hash,expert-choice,aux-free", "num_experts_list": "8",
            "topk_list": "2", "capacity_factors": "1.0,1.25", "seeds": "17,18,19", "dim": 256, "layers": 4,
            "heads": 4, "seq_len": 256, "batch_size": 64, "max_steps": 300, "eval_interval": 100,
            "compile": True, "runs_per_gpu": 12},
}
PRESETS = {
    "seed": {"seed_semantics": "all", **BUDGET, **SEED_GRID},
    "seed-budget": {**BUDGET, **SEED_GRID, "router_list": "top1,topk-hard,softk,hash,expert-choice,aux-free"},
    **SWEEP_SIZES,
}


def seed_factors() -> tuple[str, ...]:
    """The older tool's routing factors the MoE layer implements."""
    return tuple(mrb.SEED_FACTORS)


def resolve_semantics(text: str) -> tuple[str, ...]:
    """``all`` | ``none`` | ``a,b,-c`` -> the factors in canonical order."""
    known = seed_factors() + (RECIPE_FACTOR,)
    chosen: list[str] = []
    for token in [t.strip() for t in str(text).split(",") if t.strip()]:
        remove = token.startswith("-")
        name = token.lstrip("-").replace("-", "_")
        names = list(known) if name == "all" else [] if name == "none" else [name]
        for n in names:
            if n not in known:
                raise mrb.ConfigError(f"--seed-semantics: unknown factor {n!r} (known: all, none, {', '.join(known)})")
            if remove and n in chosen:
                chosen.remove(n)
            elif not remove and n not in chosen:
                chosen.append(n)
    return tuple(n for n in known if n in chosen)


def resolve_preset(name: str | None) -> str | None:
    if name == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name is not None and name not in PRESETS:
        raise mrb.ConfigError(f"--preset {name}: unknown (choose from {', '.join(['auto', *PRESETS])})")
    return name


# ----------------------------------------------------------------------------- flags

def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
              exclude: frozenset[str] = frozenset()) -> None:
    """One flag per field of ``cls`` (but ``exclude``): its help, default and type come from the field."""
    for f in fields(cls):
        if f.name in exclude:
            continue
        m = f.metadata
        names = [flag_of(f), *m.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = m.get("help", "") + " (default: %(default)s)"
        if f.type in ("bool", bool):
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=m.get("help", ""))
            continue
        kind = m.get("type") or type(default)
        parser.add_argument(*names, dest=f.name, type=kind, default=default, choices=m.get("choices"),
                            help=help_text)


def add_preset_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    names = ", ".join(["auto", *PRESETS]) if default == "auto" else ", ".join(PRESETS)
    parser.add_argument("--preset", default=default, help=f"defaults for a purpose ({names}); typed flags "
                        "win. seed: the older tool's recipe and routing semantics; seed-budget: its token "
                        "budget with ours; cpu/gpu: a sweep sized for the machine (default: %(default)s)")


def train_parser(description: str, *, preset_default: str | None = None, bench: bool = True,
                 exclude: frozenset[str] = frozenset(), **kw) -> argparse.ArgumentParser:
    """A parser with every training flag (sections model, MoE, optimisation, run[, bench]) but ``exclude``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    add_preset_flags(p, preset_default)
    for name in (*TRAIN_SECTIONS, *(("bench",) if bench else ())):
        cls = SECTIONS[name]
        add_flags(p.add_argument_group(f"{name} ({cls.__doc__.strip().rstrip('.')})"), cls, exclude)
    return p


def apply_presets(parser: argparse.ArgumentParser, argv: list[str] | None, preset_default: str | None) -> str | None:
    """Set the parser's defaults from --preset and, when --seed-semantics includes 'recipe', from
    RECIPE (two passes: a flag typed on the command line still wins)."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--preset", default=preset_default)
    early.add_argument("--seed-semantics", default=None)
    known, _ = early.parse_known_args(argv)
    preset = resolve_preset(known.preset)
    defaults = dict(PRESETS.get(preset, {}))
    semantics = known.seed_semantics or defaults.get("seed_semantics", "none")
    if RECIPE_FACTOR in resolve_semantics(semantics):
        defaults = {**RECIPE, **defaults}
    dests = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in dests})
    return preset


def config_from_namespace(ns: argparse.Namespace, preset: str | None = None) -> TrainConfig:
    values = vars(ns)
    sections = {name: cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
                for name, cls in SECTIONS.items()}
    return TrainConfig(**sections, preset=preset)


def parse_train_args(argv: list[str] | None = None, *, description: str = "Train a small MoE LM.",
                     prog: str | None = None, epilog: str | None = None) -> tuple[TrainConfig, list[str]]:
    """argv -> (normalised TrainConfig, notes to print). Raises SystemExit(2) on a bad flag and
    ConfigError on a bad combination."""
    parser = train_parser(description, prog=prog, epilog=epilog)
    preset = apply_presets(parser, argv, None)
    return normalize(config_from_namespace(parser.parse_args(argv), preset))


def normalize(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Map the seed's flags onto this harness, resolve derived defaults, validate; return the notes."""
    from train.model import DENSE  # the dense baseline's name

    notes = []
    moe, run, model, optim = cfg.moe, cfg.run, cfg.model, cfg.optim
    given = moe.router.strip().lower().replace("-", "_")
    if moe.strategy is not None:  # the seed's --strategy names the router; --router may name a backend
        moe.backend = SEED_BACKEND_NAMES.get(given, moe.backend)
        router = moe.strategy
    elif given in SEED_BACKEND_NAMES:
        notes.append(f"--router {moe.router} is the seed's backend name: using --backend torch with the "
                     "default strategy softk (pass --strategy or --router STRATEGY to choose one)")
        moe.backend, router = SEED_BACKEND_NAMES[given], "softk"
    else:
        router = moe.router
    router = router.strip().lower().replace("_", "-")
    moe.router = DENSE if router == DENSE else mrb.canonical_strategy(router)
    moe.strategy = None
    moe.backend = SEED_BACKEND_NAMES.get(moe.backend, moe.backend)
    if moe.router_arch.lower() != "linear":
        raise mrb.ConfigError(f"--router-arch {moe.router_arch}: only 'linear' is supported (the MoE layer's "
                              "router is a single linear map; the seed's mlp routers are not ported)")
    if run.tokenizer not in (None, "", "byte", "bytes"):
        notes.append(f"--tokenizer {run.tokenizer} ignored: the harness is byte-level only (256 ids)")
    run.tokenizer = "byte"
    if run.num_workers:
        notes.append("--num-workers is unused (batches are sliced in memory)")
    if moe.router == "top1":
        moe.top_k = 1
    cfg.semantics = resolve_semantics(moe.seed_semantics)
    if RECIPE_FACTOR in cfg.semantics and moe.router_init_std is None:
        moe.router_init_std = model.dim ** -0.5
    if run.log_interval <= 0:
        run.log_interval = run.eval_interval if run.eval_interval > 0 else optim.max_steps
    if run.ckpt_interval == 0:
        run.ckpt_interval = run.eval_interval if run.eval_interval > 0 else optim.max_steps
    mrb.parse_dtype(optim.dtype)
    for section, name in (("optim", "max_steps"), ("run", "batch_size"), ("model", "seq_len"),
                          ("model", "layers"), ("model", "dim"), ("model", "heads")):
        if getattr(getattr(cfg, section), name) < 1:
            raise mrb.ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if run.expert_parallel < 1:
        raise mrb.ConfigError(f"--expert-parallel must be >= 1, got {run.expert_parallel}")
    if model.dim % model.heads:
        raise mrb.ConfigError(f"--dim {model.dim} is not a multiple of --heads {model.heads}")
    if not 0.0 < run.val_fraction < 1.0:
        raise mrb.ConfigError(f"--val-fraction must be in (0, 1), got {run.val_fraction}")
    group = moe.capacity_group_tokens
    tokens = run.batch_size * model.seq_len
    if group is not None and (group < 1 or tokens % group):
        raise mrb.ConfigError(f"--capacity-group-tokens {group} must divide the rank's batch of {tokens} tokens "
                              f"(--batch-size x --seq-len)")
    return cfg, notes


NONE_PARSERS = (capacity_factor_arg, optional_float, optional_int)


def to_argv(cfg: TrainConfig, sections=TRAIN_SECTIONS) -> list[str]:
    """Flags that rebuild ``cfg`` exactly (every field, since a preset in the child could change
    a default): the command line of a sweep's child process."""
    argv = []
    for name in sections:
        section, cls = getattr(cfg, name), SECTIONS[name]
        for f in fields(cls):
            value = getattr(section, f.name)
            if isinstance(value, bool):
                argv.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
            elif value is not None:
                argv += [flag_of(f), str(value)]
            elif f.metadata.get("type") in NONE_PARSERS:
                argv += [flag_of(f), "none"]
    return argv

