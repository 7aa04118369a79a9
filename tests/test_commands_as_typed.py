"""The README's regression-suite commands as a user types them, on a clean clone (issue 11).

`asv run --quick` (one commit: the tip of main), `asv publish` and `pytest --benchmark-only` run in a
fresh `git clone` of this repository with the venv's bin first on PATH, as after `source
.venv/bin/activate`. Checked: exit status 0, no failed or errored benchmark, nothing committed
rewritten (only new result files for the measured commit), and the first view of a GPU page, a
training page and the Regressions page in headless Chromium (data drawn, no error page).

Costs one asv CPU run (about a minute on 2 cores once asv's environment exists; the environment
is kept in this repository's .asv/env, gitignored, so later runs reuse it) plus a publish.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: asv, pytest


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _changes(clone: Path) -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]



@pytest.mark.slow
def test_asv_run_publish_and_pytest_benchmark_as_typed_on_a_clean_clone(tmp_path):
    import browser  # tests/browser.py

    helpers.require_dashboard_tools(asv_ok=(BIN / "asv").exists())
    from moe_routing_bench.suite import dashboard

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "checkout", "-q", "-B", "main", head], cwd=clone, check=True)  # a user's clone is on main
    (ROOT / ".asv" / "env").mkdir(parents=True, exist_ok=True)
    (clone / ".asv").mkdir()
    (clone / ".asv" / "env").symlink_to(ROOT / ".asv" / "env")  # asv's environment: a cache, like pip's
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(clone), VIRTUAL_ENV=str(BIN.parent))

    # python3 dev.py setup's last step: this machine in ~/.asv-machine.json under its stable name
    machine = _run([str(BIN / "python"), "-m", "moe_routing_bench.suite.store", "machine"], clone, env, 120).stdout.strip()

    run = _run(["asv", "run", "--quick"], clone, env, 900)
    log = run.stdout + run.stderr
    assert "failed" not in log and "Traceback" not in log and "skipped (setup_cache failed)" not in log, log[-3000:]
    new = _changes(clone)
    assert new and all(re.fullmatch(rf"\?\? results/asv/{re.escape(machine)}/({head[:8]}-virtualenv-host-.*\.json|machine\.json)", c)
                       for c in new), new  # only new result files; benchmarks.json and machine.json untouched

    _run(["asv", "publish"], clone, env, 300)
    assert _changes(clone) == new

    bench = _run(["pytest", "--benchmark-only", "-q", "-p", "no:cacheprovider"], clone, env, 900)
    assert "Skipping non-benchmark" not in bench.stdout and re.search(r"\d+ passed", bench.stdout), bench.stdout[-2000:]
    assert _changes(clone) == new

    html = clone / ".asv" / "html"
    assert html.is_symlink() and not dashboard.external_references((html / "index.html").read_text())
    with dashboard.served(html) as url:
        for page in ("bench_routing.RoutingPath.track_routing_path_us", "exported.Training.track_best_val_loss"):
            dom = browser.dump_dom(f"{url}index.html#{page}", wait_ms=8000)
            assert "continental origin" not in dom, f"{page}: asv's error page (a library did not load)"
            assert 'class="flot-base"' in dom, f"{page}: no plot"
            ticks = browser.y_ticks(dom)
            assert len(ticks) >= 2 and max(ticks) > 1.5, f"{page}: empty first view (y ticks {ticks})"
            assert "machine-nvidia" in dom or "machine-cpu" in dom  # a legend: series were drawn
            assert not re.search(r"machine-nvidia[^;<]*; shape-T1024-", dom), f"{page}: empty GPU series in the legend"
        dom = browser.dump_dom(f"{url}index.html#regressions", wait_ms=8000)
        assert "continental origin" not in dom and "Best after" in dom, "no Regressions table"


@pytest.mark.slow
def test_torchrun_sweep_as_typed_on_a_clean_clone(tmp_path):
    """`torchrun train/sweep.py` with no arguments on a clean clone: the machine-sized sweep (3 tiny runs
    on a CPU, about 2 minutes on 2 idle cores), a progress line per run, exit 0, outputs only under the
    git-ignored runs/, nothing committed rewritten."""
    helpers.require("torchrun", (BIN / "torchrun").exists())
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(BIN.parent))
    out = _run(["torchrun", "train/sweep.py"], clone, env, 1500)
    log = out.stdout + out.stderr
    assert "Traceback" not in log and "ChildFailedError" not in log, log[-3000:]
    progress = re.findall(r"^\[(\d+)/(\d+)\] \S+ ok ", log, re.M)
    assert progress and len(progress) == int(progress[0][1]), log[-3000:]
    assert (clone / "runs" / "routing_sweep" / "summary.csv").is_file()
    assert _changes(clone) == []  # runs/ is ignored; nothing tracked changed
