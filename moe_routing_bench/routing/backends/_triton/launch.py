"""Shared helpers of the Triton kernels: interpreter detection, launch options, per-device tuning.

`TRITON_INTERPRET=1` is read when a kernel is decorated, so it must be set before these modules
are imported (`_triton/__init__.py` sets it when no CUDA GPU is present). Under the interpreter
nothing can be timed, so every kernel has a fixed default config; on a GPU each `Launcher` picks a
config per (device, shape class) by timing a few (`triton.autotune`) and keeps the choice in a
JSON file per device under the tune cache directory, so an H200 and an H100 each get their own
best and a later process on the same device does not tune again.

Options live in one frozen `LaunchOptions` held by a context variable: `options()` reads it,
`using(**changes)` changes it for a block (tests, the GPU tools). Environment defaults:
MRB_TRITON_AUTOTUNE=0 (fixed configs), MRB_TRITON_FAST_LAUNCH=0, MRB_TUNE_CACHE=DIR.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class LaunchOptions:
    """How kernels launch. autotune: time configs per device and shape class on a GPU (False: fixed
    defaults). fast_launch: relaunch cached compiled kernels directly. poison: tests fill every kernel
    output with a sentinel first ("a": NaN / -1234567 / True, "b": NaN / 7654321 / False).
    tune_cache: directory of the per-device tuning files (None: $MRB_TUNE_CACHE or
    ~/.cache/moe_routing_bench); "" keeps choices in memory only. force_config: {kernel name: config
    kwargs} run those kernels with that config whatever the tuning (tests check every candidate)."""

    autotune: bool = True
    fast_launch: bool = True
    poison: str | None = None
    tune_cache: str | None = None
    force_config: dict | None = None


_OPTIONS = contextvars.ContextVar("mrb_launch_options", default=LaunchOptions(
    autotune=os.environ.get("MRB_TRITON_AUTOTUNE", "1") != "0",
    fast_launch=os.environ.get("MRB_TRITON_FAST_LAUNCH", "1") != "0",
))
_POISON = {None: None, "a": (float("nan"), -1234567, True), "b": (float("nan"), 7654321, False)}


def options() -> LaunchOptions:
    return _OPTIONS.get()


@contextlib.contextmanager
def using(**changes):
    """Run a block with some launch options changed, e.g. `with using(autotune=False): ...`."""
    new = replace(options(), **changes)
    if new.poison not in _POISON:
        raise ValueError(f"poison mode must be one of {list(_POISON)}")
    token = _OPTIONS.set(new)
    try:
        yield new
    finally:
        _OPTIONS.reset(token)


def autotune_enabled() -> bool:
    return options().autotune and not INTERPRET


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def capturing() -> bool:
    """A CUDA graph is being captured on the current stream (nothing may be timed or synchronised)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def runs_here(*tensors: torch.Tensor) -> bool:
    """True when Triton can run on these tensors: CUDA tensors on a GPU, CPU ones in the interpreter."""
    want = "cpu" if INTERPRET else "cuda"
    return all(t is None or t.device.type == want for t in tensors)


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for kernel outputs (poisoned when the options ask for it)."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    fill = _POISON[options().poison]
    if fill is not None and out.numel():
        value = fill[0] if dtype.is_floating_point else fill[2] if dtype == torch.bool else fill[1]
        out.fill_(value)
    return out


# ----------------------------------------------------------------------------- per-device tune cache

def device_slug(device: int | None = None) -> str:
    """File-name form of the GPU's name, e.g. 'nvidia-h200' ('interpreter' without a GPU)."""
    if INTERPRET or not torch.cuda.is_available():
        return "interpreter"
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def tune_cache_path() -> str | None:
    """The JSON file of tuned configs for this device and Triton version (None: memory only)."""
    root = options().tune_cache
    if root is None:
        root = os.environ.get("MRB_TUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "moe_routing_bench")
    if not root:
        return None
    return os.path.join(root, f"tune-{device_slug()}-triton{triton.__version__}.json")


class TuneCache:
    """Tuned launch configs by key (kernel | shape class), read from and written through to one file.
    Writes are atomic (temp file + rename) and merge what another process wrote meanwhile."""

    def __init__(self):
        self.entries: dict[str, dict] = {}
        self.loaded_from: str | None = None

    def _sync(self) -> None:
        path = tune_cache_path()
        if path != self.loaded_from:
            self.entries = {**_read_json(path), **self.entries} if path else dict(self.entries)
            self.loaded_from = path

    def get(self, key: str) -> dict | None:
        self._sync()
        hit = self.entries.get(key)
        return None if hit is None else hit["config"]

    def put(self, key: str, config: dict, times_ms: dict | None = None) -> None:
        self._sync()
        self.entries[key] = {"config": config, **({"times_ms": times_ms} if times_ms else {})}
        path = self.loaded_from
        if not path:
            return
        # Temp + rename here, not harness.records.atomic_target: the routing library imports no harness.
        # No lock: a concurrent tuner's entry lost in the merge only costs that shape a re-tune.
        tmp = None
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            merged = {**_read_json(path), **self.entries}
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tune-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
            tmp = None
        except OSError:  # a read-only home: keep the choice in memory
            pass
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def _read_json(path: str | None) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


TUNE_CACHE = TuneCache()
LAUNCHERS: list["Launcher"] = []  # every Launcher, registered at import (for `configs_used`)


def shape_key(name: str, named: dict, key: tuple, bucket: tuple) -> str:
    """'name|H=4096|K=2|T~16384|bfloat16,int64': exact values of `key`, power-of-two classes of `bucket`,
    and the dtypes of the tensor arguments."""
    parts = [f"{k}={named[k]}" for k in key] + [f"{k}~{next_pow2(named[k])}" for k in bucket]
    dtypes = ",".join(str(v.dtype).replace("torch.", "") for v in named.values() if isinstance(v, torch.Tensor))
    return "|".join([name, *parts, dtypes])


def configs_used() -> dict:
    """What each kernel ran with last in this process: {kernel: {"key", "config", "source"}}
    (source: fixed, tuned now, or tune-cache). Bench records carry this."""
    return {lch.name: dict(lch.last) for lch in LAUNCHERS if lch.last}


# ----------------------------------------------------------------------------- launcher

def _spec(a):
    """What Triton specialises a launch on (dtype and 16-byte alignment of tensors; ints equal to 1,
    divisible by 16, and their width), so a cached compiled kernel is reused only where Triton would."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() & 15 == 0)
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a == 1, a & 15 == 0, -2**31 <= a < 2**31, 0 <= a < 2**32, -2**63 <= a < 2**63)
    if isinstance(a, float):
        return "f"
    return (type(a), a)


_RAW = (int, float, bool)  # keyed by value: finer than Triton's specialisation, and cheaper


def _config_kwargs(cfg) -> dict:
    return dict(cfg.all_kwargs()) if isinstance(cfg, triton.Config) else dict(cfg)


class Launcher:
    """Launch a @triton.jit kernel with a fixed or tuned config, cheaply.

    Config: under the interpreter (or with autotune off) `default(args, meta)`; on a GPU the config
    cached for this device and shape class (`shape_key` of `key` and `bucket`), else
    `triton.autotune` times `configs` (pruned by `prune`) once and the choice is cached on disk.
    Launch: Triton's Python launcher re-binds and re-specialises every argument on every call
    (tens of microseconds for kernels with many arguments); after the first launch of a
    specialisation this class calls the cached CompiledKernel's `run` itself, with the same
    arguments Triton would pass (no launch hooks), unless fast_launch is off.
    Kernels take runtime arguments positionally and every constexpr by keyword."""

    def __init__(self, kernel, default, configs=None, key=(), prune=None, bucket=(), name=None):
        self.kernel = kernel
        self.default = default
        self.configs = configs
        self.key = tuple(key)
        self.bucket = tuple(bucket)
        self.prune = prune
        self.name = name or getattr(kernel, "__name__", None) or kernel.fn.__name__
        self.chosen: dict[tuple, tuple[dict, str]] = {}  # cheap key -> (config, shape key)
        self._where = None
        self.fast = {}
        self.fast_ok = True
        self.last: dict = {}
        LAUNCHERS.append(self)

    def _tune(self, grid_fn, args, meta, skey):
        kw = {"prune_configs_by": {"early_config_prune": self.prune}} if self.prune else {}
        tuner = triton.autotune(configs=self.configs, key=list(self.key), do_bench=_tuning_bench, **kw)(self.kernel)
        tuner[lambda M: grid_fn(M)](*args, **meta)
        cfg = _config_kwargs(tuner.best_config)
        timings = getattr(tuner, "configs_timings", None) or {}
        times = {str(_config_kwargs(c)): (t[0] if isinstance(t, (list, tuple)) else t) for c, t in timings.items()}
        TUNE_CACHE.put(skey, cfg, times)
        return cfg

    def _fast_key(self, args: tuple, meta: dict) -> tuple:
        """The shape class as a tuple (cheap: looked up on every launch): values of `key`, power-of-two
        classes of `bucket`, tensor dtypes; `_shape_key` is its string form for the tune cache."""
        if self._where is None:
            pos = {n: i for i, n in enumerate(self.kernel.arg_names)}
            self._where = [(pos.get(n), n) for n in self.key + self.bucket]
        vals = [args[i] if i is not None and i < len(args) else meta[n] for i, n in self._where]
        nk = len(self.key)
        return (*vals[:nk], *(next_pow2(v) for v in vals[nk:]), *(a.dtype for a in args if isinstance(a, torch.Tensor)))

    def _shape_key(self, args: tuple, meta: dict) -> str:
        named = dict(zip(self.kernel.arg_names, args))
        named.update(meta)
        return shape_key(self.name, named, self.key, self.bucket)

    def known_config(self, args: tuple, meta: dict) -> dict | None:
        """The config a launch with these arguments would use now without tuning (None: it would tune)."""
        forced = options().force_config
        if forced and self.name in forced:
            return _config_kwargs(forced[self.name])
        if not (autotune_enabled() and self.configs):
            return _config_kwargs(self.default(args, meta))
        hit = self.chosen.get(self._fast_key(args, meta))
        return hit[0] if hit else TUNE_CACHE.get(self._shape_key(args, meta))

    def __call__(self, grid_fn, args: tuple, meta: dict):
        """Launch on grid `grid_fn(config_kwargs)`."""
        forced = options().force_config
        if forced and self.name in forced:
            cfg = _config_kwargs(forced[self.name])
            self.last = {"key": self.name, "config": cfg, "source": "forced"}
        elif autotune_enabled() and self.configs:
            fkey = self._fast_key(args, meta)
            hit = self.chosen.get(fkey)
            if hit is not None:
                cfg, skey = hit
                self.last = {"key": skey, "config": cfg, "source": "tuned"}
            else:
                skey = self._shape_key(args, meta)
                cfg, source = TUNE_CACHE.get(skey), "tune-cache"
                if cfg is None and not capturing():
                    cfg = self._tune(grid_fn, args, meta, skey)  # the tuner also launched it
                    self.chosen[fkey] = (cfg, skey)
                    self.last = {"key": skey, "config": cfg, "source": "tuned now"}
                    return
                if cfg is None:
                    cfg, source = _config_kwargs(self.default(args, meta)), "fixed (capturing)"
                else:
                    self.chosen[fkey] = (cfg, skey)
                self.last = {"key": skey, "config": cfg, "source": source}
        else:
            cfg = _config_kwargs(self.default(args, meta))
            self.last = {"key": self.name, "config": cfg, "source": "fixed"}
        self.launch(grid_fn(cfg), args, {**meta, **cfg})

    def launch(self, grid, args: tuple, kwargs: dict):
        if INTERPRET or not (options().fast_launch and self.fast_ok):
            self.kernel[grid](*args, **kwargs)
            return
        skey = (tuple(a if type(a) in _RAW else _spec(a) for a in args), tuple(kwargs.items()))
        hit = self.fast.get(skey)
        if hit is None:
            k = self.kernel[grid](*args, **kwargs)
            if (all(hasattr(k, a) for a in ("run", "function", "packed_metadata")) and not hasattr(k, "result")
                    and _no_launch_hooks()):
                tail = tuple(kwargs[n] for n in self.kernel.arg_names[len(args):])
                self.fast[skey] = (k.run, k.function, k.packed_metadata, tail)
            return
        run, function, metadata, tail = hit
        stream = _current_stream(torch.cuda.current_device())
        n = len(grid)
        try:
            run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream, function, metadata, None, None,
                None, *args, *tail)
        except TypeError:  # a Triton whose launcher takes other arguments: use its own path from now on
            self.fast.clear()
            self.fast_ok = False
            self.kernel[grid](*args, **kwargs)


def _tuning_bench(kernel_call, quantiles):
    """What the tuner times each candidate with: CUDA events, median of ~25 ms after 5 ms of warm-up."""
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def _no_launch_hooks() -> bool:
    try:
        rt = triton.knobs.runtime
        hooks = (rt.launch_enter_hook, rt.launch_exit_hook)
    except AttributeError:  # pragma: no cover - older Triton: never take the fast path
        return False
    return all(h is None or getattr(h, "calls", None) == [] for h in hooks)


def _current_stream(device: int) -> int:
    return torch.cuda.current_stream(device).cuda_stream


try:  # what Triton itself uses
    from torch._C import _cuda_getCurrentRawStream as _current_stream  # noqa: F811
except ImportError:  # pragma: no cover
    pass
