"""Records on disk: concurrent appenders lose nothing, a killed writer leaves a parseable file and
no temp files (issue 12)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moe_routing_bench.harness.records import append_jsonl, atomic_target, clean_orphaned_temps, read_jsonl, write_atomic

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

APPENDER = textwrap.dedent("""
    import sys
    from moe_routing_bench.harness.records import append_jsonl
    path, writer, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for b in range(batches):
        append_jsonl(path, [{"writer": writer, "batch": b, "i": i, "pad": "x" * size} for i in range(3)])
""")


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_eight_concurrent_appenders_lose_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [_spawn(APPENDER, path, w, 40, 5000) for w in range(8)]  # 15 KB batches: more than a pipe buffer
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    rows = read_jsonl(path)
    assert len(rows) == 8 * 40 * 3
    assert {(r["writer"], r["batch"], r["i"]) for r in rows} == {(w, b, i) for w in range(8) for b in range(40) for i in range(3)}
    assert list(tmp_path.iterdir()) == [path]


def test_torn_last_line_is_dropped_on_read_and_repaired_by_the_next_append(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "unfinis')  # a writer killed mid-record
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, [{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert path.read_text().endswith('{"a": 4}\n')


def test_a_corrupt_middle_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_sigkill_loop_leaves_parseable_files_and_no_temp_files(tmp_path):
    """Writers killed at random moments: every file stays parseable, no record is half-kept, and
    nothing but the two target files remains once the next write has run."""
    jsonl, whole = tmp_path / "r.jsonl", tmp_path / "state.json"
    code = textwrap.dedent("""
        import sys
        from moe_routing_bench.harness.records import append_jsonl, write_atomic
        jsonl, whole = sys.argv[1], sys.argv[2]
        n = 0
        while True:
            n += 1
            append_jsonl(jsonl, [{"n": n, "pad": "y" * 200_000}])
            write_atomic(whole, '{"n": %d, "pad": "%s"}' % (n, "z" * 2_000_000))
    """)
    for round_ in range(12):
        proc = _spawn(code, jsonl, whole)
        time.sleep(0.6 + 0.05 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows = read_jsonl(jsonl) if jsonl.exists() else []
        assert all(len(r["pad"]) == 200_000 for r in rows)
        if whole.exists():
            assert len(json.loads(whole.read_text())["pad"]) == 2_000_000
    write_atomic(whole, "{}")  # the next writer cleans what killed writers left
    append_jsonl(jsonl, [{"n": -1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "state.json"]
    assert read_jsonl(jsonl)[-1] == {"n": -1}


def test_orphaned_temp_of_a_dead_process_is_removed_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "f.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".f.json.{int(dead.stdout)}.abc.tmp"
    live = tmp_path / f".f.json.{os.getpid()}.abc.tmp"
    other = tmp_path / f".g.json.{int(dead.stdout)}.abc.tmp"  # another file's temp: not ours to touch
    for p in (orphan, live, other):
        p.write_text("partial")
    assert clean_orphaned_temps(target) == [orphan]
    write_atomic(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "f.json"])


def test_atomic_target_removes_its_temp_on_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_target(target) as tmp:
            tmp.write_bytes(b"new, half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.slow
def test_cli_runs_writing_one_out_file_lose_nothing(tmp_path):
    out = tmp_path / "cli.jsonl"
    argv = ["-m", "moe_routing_bench.cli", "bench-pack-only", "--device", "cpu", "--num-tokens", "32",
            "--hidden-dim", "16", "--num-experts", "4", "--top-k", "2", "--iters", "1", "--warmup", "0",
            "--backend", "torch", "--out", str(out)]
    procs = [subprocess.Popen([sys.executable, *argv], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        assert "wrote 1 records" in stdout
    assert len(read_jsonl(out)) == 8


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a written record file is readable like any file the umask allows."""
    import os

    from moe_routing_bench.harness.records import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
