"""The project's asv plugin: asv.conf.json names it under `plugins` (".moe_routing_bench.suite.asv_plugin").

asv 0.6.6 imports each module named there before running a command and calls its `setup()`;
`asv publish` then runs every `asv.publishing.OutputPublisher` subclass. Through those two hooks
plain `asv run` and `asv publish` do what this project needs:

- `OfflineAssets` (an OutputPublisher, run after asv's own pages): copies the JavaScript and CSS
  that asv's index.html loads from CDNs into the output and points the page at the copies
  (`dashboard.vendor_asv_assets`), so the dashboard renders with no network (on a machine that can
  neither reach npm nor find the libraries in its cache, a warning says so and the page keeps its
  CDN links: publish still succeeds); and four small
  edits of the published graph page (`dashboard.JS_PATCHES`: short legend labels, y axis from 0,
  bars of several series side by side, no legend entry for a series without values).
- `setup()` wraps two asv functions:
  * `Benchmarks.save` (called by `asv run` after discovery) keeps the entries of benchmarks the run
    did not discover: results exported into the store (they have no code to run) and GPU-only
    benchmarks, which a machine without a GPU does not discover. Without this an `asv run` on one
    machine hides every other machine's and every exporter's history. Rediscovered entries replace
    their old ones, so an unchanged benchmark leaves the file byte-identical.
  * `asv compare A B` lists comparable rows only: benchmarks measured (in the same environment)
    at both commits, without their skipped combinations (NaN: a GPU shape on a CPU, a backend a
    suite does not time there); failures stay visible. Unchanged asv otherwise prints an `n/a` row
    for everything either commit lacks (95% of the table between two CPU commits).
  * `Publish.run` writes into a new folder beside `html_dir` and then points `html_dir` (a symlink)
    at it with one atomic rename; a dashboard being served switches from the old complete output to
    the new complete output, never to a half-written or wiped one. The previous output is kept
    until the next publish (a browser may still be loading it), older ones are removed.

- `HostPackagesVirtualenv` (environment_type "virtualenv-host"): asv's virtualenv for each commit,
  which installs only the project's wheel and sees the packages of the interpreter running asv
  (torch, triton, numpy, ...) through a `.pth` file. A GPU machine benchmarks its own CUDA torch, an
  offline machine downloads nothing, and creating the environment takes seconds instead of a torch
  download. The matrix's packages are recorded at the versions the host has (a pinned version the
  host does not have is recorded as the host's, e.g. torch 2.11.0+cu130 on a GPU machine), so a
  result never claims a torch it did not run.

Pinned to asv 0.6.6 (pyproject): the wrapped functions are checked by tests/test_asv_plugin.py.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from asv import util
from asv.plugins.virtualenv import Virtualenv
from asv.publishing import OutputPublisher

GENERATION_PREFIX = ".gen-"  # html_dir -> <html_dir>.gen-XXXX (a symlink to the current output)


class OfflineAssets(OutputPublisher):
    """Vendors the CDN libraries into the published output (no page of its own)."""

    name = "offline-assets"
    button_label = None
    description = "JavaScript and CSS served from the output folder"
    order = 1000  # after asv's own pages

    @classmethod
    def publish(cls, conf, repo, benchmarks, graphs, revisions):
        from asv.console import log

        from .dashboard import LibrariesUnavailable, patch_asv_js, vendor_asv_assets

        try:
            vendor_asv_assets(Path(conf.html_dir))
        except LibrariesUnavailable as e:  # still a dashboard, one that needs network to render
            log.warning(f"{e}. This output loads them from CDNs: it renders only with network.")
        patch_asv_js(Path(conf.html_dir))


def host_site_dirs() -> list[str]:
    """The package directories of the interpreter running asv, in its import order."""
    return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]


def host_version(requirement: str, wanted: str) -> str:
    """The version to record for a matrix entry: the host's, unless the matrix leaves it open ("")
    or names the host's own release (2.13.0 for 2.13.0+cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version(requirement)
    except PackageNotFoundError:
        raise util.UserError(f"virtualenv-host: the matrix names {requirement}, which the interpreter running "
                             "asv does not have; install it there (`python3 dev.py setup` does)") from None
    if not wanted or have.split("+")[0] == wanted:
        return wanted
    return have


class HostPackagesVirtualenv(Virtualenv):
    """asv's virtualenv without its own copies of torch & co (module docstring)."""

    tool_name = "virtualenv-host"

    def __init__(self, conf, python, requirements, tagged_env_vars):
        recorded = {name: host_version(name.removeprefix("pip+"), wanted) for name, wanted in requirements.items()}
        super().__init__(conf, python, recorded, tagged_env_vars)

    def _setup(self):
        # virtualenv brings pip, setuptools and wheel from its own bundle: nothing is downloaded
        util.check_call([sys.executable, "-m", "virtualenv", "--setuptools=bundle",
                         "-p", self._executable, self._path], env={**os.environ, **self.build_env_vars})
        purelib = self.run(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
        Path(purelib, "_moe_host_packages.pth").write_text("\n".join(host_site_dirs()) + "\n")


def merged_benchmarks(old: dict, discovered: dict) -> dict:
    """benchmarks.json after a discovery: the old entries, the discovered ones replacing theirs."""
    merged = {k: v for k, v in old.items() if k != "version"}
    merged.update({k: v for k, v in discovered.items() if k != "version"})
    return merged


def _save_merged(original):
    def save(self):
        path = Path(self.get_benchmark_file_path(self._conf.results_dir))
        try:
            old = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            old = {}
        self._all_benchmarks = merged_benchmarks(old, self._all_benchmarks)
        original(self)

    save.__wrapped__ = original
    return save


def _measured_only(original):
    def unroll_result(*args, **kwargs):
        for name, value, stats, samples in original(*args, **kwargs):
            if not (isinstance(value, float) and math.isnan(value)):
                yield name, value, stats, samples

    unroll_result.__wrapped__ = original
    return unroll_result


def _results_of(conf, machine, commit_hash, env_names):
    """(key, params, value, stats, samples, version, machine, env) rows as asv's compare reads them."""
    from asv.results import iter_results_for_machine_and_hash

    rows = []
    for result in iter_results_for_machine_and_hash(conf.results_dir, machine, commit_hash):
        if env_names is not None and result.env_name not in env_names:
            continue
        for key in result.get_all_result_keys():
            params = result.get_result_params(key)
            rows.append((key, params, result.get_result_value(key, params), result.get_result_stats(key, params),
                         result.get_result_samples(key, params), result.benchmark_version.get(key),
                         result.params["machine"], result.env_name))
    return rows


def _common_rows(print_table):
    def wrapped(cls, conf, hash_1, hash_2, factor, split, resultset_1=None, resultset_2=None, machine=None,
                *args, env_names=None, **kwargs):
        if resultset_1 is None and resultset_2 is None and machine is not None:
            rows_1 = _results_of(conf, machine, hash_1, env_names)
            rows_2 = _results_of(conf, machine, hash_2, env_names)
            both = {(r[0], r[7]) for r in rows_1} & {(r[0], r[7]) for r in rows_2}
            if both:
                resultset_1 = [r for r in rows_1 if (r[0], r[7]) in both]
                resultset_2 = [r for r in rows_2 if (r[0], r[7]) in both]
        return print_table(cls, conf, hash_1, hash_2, factor, split, resultset_1, resultset_2, machine, *args,
                           env_names=env_names, **kwargs)

    wrapped._moe_common = True
    return wrapped


def publish_and_swap(run, conf, *args, **kwargs):
    """Run asv's publish into a fresh generation folder, then atomically repoint `conf.html_dir`."""
    link = Path(conf.html_dir).absolute()
    link.parent.mkdir(parents=True, exist_ok=True)
    gen = Path(tempfile.mkdtemp(dir=link.parent, prefix=link.name + GENERATION_PREFIX))
    previous = os.path.realpath(link) if link.is_symlink() else None
    conf.html_dir = str(gen)
    try:
        result = run(conf, *args, **kwargs)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    finally:
        conf.html_dir = str(link)
    os.chmod(gen, 0o755)
    if link.exists() and not link.is_symlink():  # an output from before this plugin: moved aside once
        os.replace(link, link.parent / (link.name + GENERATION_PREFIX + "old"))
    tmp_link = link.parent / f".{link.name}.link-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    os.symlink(gen.name, tmp_link)
    os.replace(tmp_link, link)
    for stale in link.parent.glob(link.name + GENERATION_PREFIX + "*"):
        if stale != gen and str(stale) != previous:
            shutil.rmtree(stale, ignore_errors=True)
    return result


def setup() -> None:
    """Called by asv's plugin manager when it imports this module."""
    from asv.benchmarks import Benchmarks
    from asv.commands import compare
    from asv.commands.publish import Publish

    if not hasattr(Benchmarks.save, "__wrapped__"):
        Benchmarks.save = _save_merged(Benchmarks.save)
    if not hasattr(compare.unroll_result, "__wrapped__"):
        compare.unroll_result = _measured_only(compare.unroll_result)
    if not getattr(compare.Compare.print_table, "_moe_common", False):
        compare.Compare.print_table = classmethod(_common_rows(compare.Compare.print_table.__func__))
    if not getattr(Publish.run, "_moe_swaps", False):
        run = Publish.run.__func__

        def swapped(cls, conf, *args, **kwargs):
            return publish_and_swap(lambda c, *a, **k: run(cls, c, *a, **k), conf, *args, **kwargs)

        swapped._moe_swaps = True
        Publish.run = classmethod(swapped)
