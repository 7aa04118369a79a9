"""Shared helpers of the Triton kernels: interpreter detection, launch-config selection, autotune.

`TRITON_INTERPRET=1` is read when a kernel is decorated, so it must be set before these modules
are imported (`kernels/__init__.py` sets it when no CUDA GPU is present). Under the interpreter
`triton.autotune` cannot run (it needs a GPU to time configs), so every kernel also has a fixed
default config; on a GPU the launchers use `triton.autotune` over a few configs unless
`set_autotune(False)` (or `MRB_TRITON_AUTOTUNE=0`) asks for the fixed defaults.
"""
from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_state = {"autotune": os.environ.get("MRB_TRITON_AUTOTUNE", "1") != "0"}


def set_autotune(enabled: bool) -> None:
    """Use triton.autotune on the GPU (True, default) or the fixed default configs (False)."""
    _state["autotune"] = bool(enabled)


def autotune_enabled() -> bool:
    return _state["autotune"] and not INTERPRET


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def runs_here(*tensors: torch.Tensor) -> bool:
    """True when Triton can run on these tensors: CUDA tensors on a GPU, CPU ones in the interpreter."""
    want = "cpu" if INTERPRET else "cuda"
    return all(t is None or t.device.type == want for t in tensors)


def make_autotuner(kernel, configs: list, key: list[str], **kw):
    """triton.autotune(configs, key)(kernel), built lazily (never under the interpreter)."""
    return triton.autotune(configs=configs, key=key, **kw)(kernel)


_state["fast_launch"] = os.environ.get("MRB_TRITON_FAST_LAUNCH", "1") != "0"
_OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def set_fast_launch(enabled: bool) -> None:
    """Relaunch cached compiled kernels directly (True, default) or always through Triton's launcher."""
    _state["fast_launch"] = bool(enabled)


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
    """Launch a @triton.jit kernel with a fixed or autotuned config, cheaply.

    Config: the interpreter (and `set_autotune(False)`) uses `default(args, meta)`; on a GPU a
    triton.autotune over `configs` keyed on `key` picks one per key the first time, after which the
    chosen config is looked up directly. Launch: Triton's Python launcher re-binds and re-specialises
    every argument on every call (tens of microseconds for kernels with many arguments); after the
    first launch of a specialisation this class calls the cached CompiledKernel's `run` itself, with
    the same arguments Triton would pass (no launch hooks), unless `set_fast_launch(False)`.
    Kernels take runtime arguments positionally and every constexpr by keyword."""

    def __init__(self, kernel, default, configs=None, key=(), prune=None):
        self.kernel = kernel
        self.default = default
        self.configs = configs
        self.key = tuple(key)
        self.prune = prune
        self.tuner = None
        self.chosen = {}
        self.fast = {}
        self.names = None

    def _tuner(self):
        if self.tuner is None:
            kw = {"prune_configs_by": {"early_config_prune": self.prune}} if self.prune else {}
            self.tuner = make_autotuner(self.kernel, self.configs, key=list(self.key), **kw)
        return self.tuner

    def __call__(self, grid_fn, args: tuple, meta: dict):
        """Launch on grid `grid_fn(config_kwargs)`."""
        if autotune_enabled() and self.configs:
            named = dict(zip(self.kernel.arg_names, args))
            named.update(meta)
            tkey = tuple(named[k] for k in self.key) + tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
            cfg = self.chosen.get(tkey)
            if cfg is None:  # first call of this key: triton.autotune times the configs and launches
                tuner = self._tuner()
                tuner[lambda M: grid_fn(M)](*args, **meta)
                self.chosen[tkey] = _config_kwargs(tuner.best_config)
                return
        else:
            cfg = self.default(args, meta)
        cfg = _config_kwargs(cfg)
        self.launch(grid_fn(cfg), args, {**meta, **cfg})

    def launch(self, grid, args: tuple, kwargs: dict):
        if INTERPRET or not _state["fast_launch"]:
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
            set_fast_launch(False)
            self.kernel[grid](*args, **kwargs)


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


_POISON = {None: None, "a": (float("nan"), -1234567, True), "b": (float("nan"), 7654321, False)}


def set_poison(mode: str | None) -> None:
    """Tests: fill every kernel output buffer before the kernels run (None: plain torch.empty).
    "a": NaN floats, -1234567 ints, True bools; "b": NaN, 7654321, False. An element a kernel
    forgets to write then shows up as a mismatch against the reference."""
    if mode not in _POISON:
        raise ValueError(f"poison mode must be one of {list(_POISON)}")
    _state["poison"] = mode


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for kernel outputs (poisoned when a test asks for it)."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    fill = _POISON[_state.get("poison")]
    if fill is not None and out.numel():
        value = fill[0] if dtype.is_floating_point else fill[2] if dtype == torch.bool else fill[1]
        out.fill_(value)
    return out
