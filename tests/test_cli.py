"""Every seed command runs at small sizes on CPU; every bad input is one line and exit 2."""
import json
import subprocess
import sys

import pytest
import torch

from moe_routing_bench.cli import main

SMALL = ["--device", "cpu", "--num-tokens", "96", "--hidden-dim", "32", "--num-experts", "8", "--iters", "3", "--warmup", "1"]


@pytest.mark.parametrize("argv", [
    ["bench-topk", "--impl", "torch", "--top-k", "2", *SMALL],
    ["bench-routing", "--impl-topk", "torch", "--top-k", "2", *SMALL],
    ["bench-pack", "--top-k", "2", *SMALL],
    ["bench-pack-only", "--top-k", "2", *SMALL],
    ["bench-combine-only", "--top-k", "2", *SMALL],
    ["bench-moe-layer", "--top-k", "2", "--expand", "2", "--strategy", "softk", "--backend", "torch_soft",
     "--capacity-factor", "1.25", "--renorm-after-drop", "--temperature", "1.0", "--soft-normalize", "softmax", *SMALL],
    ["bench-moe-layer", "--top-k", "2", "--strategy", "top1", *SMALL],
    ["bench-capacity", "--top-k", "2", "--capacity-factors", "1.00,1.10,1.25,1.50", *SMALL],
    ["bench-routing", "--workload", "zipf", "--strategy", "hash", "--top-k", "2", *SMALL],
])
def test_seed_commands_run_and_write_records(argv, tmp_path, capsys):
    out = tmp_path / "sub" / "r.jsonl"
    assert main([*argv, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["device_name"] and r["torch"] == torch.__version__ and r["seed"] == 17 for r in rows)
    assert all(r.get("git_commit") and r.get("command") for r in rows)
    assert capsys.readouterr().out.count("\n") >= 2  # a table


def test_sweeps_with_seed_flags(tmp_path):
    out = tmp_path / "pack.jsonl"
    assert main(["sweep-pack", "--tokens", "64,96", "--hidden", "32", "--experts", "8", "--topk", "1,2",
                 "--iters", "2", "--dtype", "float16", "--device", "cpu", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2 * 2 * 2  # grid points x (pack, combine)
    out = tmp_path / "cap.jsonl"
    assert main(["sweep-capacity", "--device", "cpu", "--dtype", "bfloat16", "--tokens", "64", "--hidden-dim", "32",
                 "--experts", "8,16", "--topk", "1,2", "--capacity-factors", "1.0,1.25", "--backend", "torch_soft",
                 "--strategy", "softk", "--soft_normalize", "softmax", "--renorm-after-drop", "--iters", "2",
                 "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {r["capacity_factor"] for r in rows} == {1.0, 1.25}
    assert all(0 <= r["avg_drop_rate"] <= 1 for r in rows)


def test_env_reports_copy_bandwidth(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    assert "copy_GBps" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bench-topk", "--top-k", "9"], "top-k must be between 1 and num_experts=8"),
    (["bench-topk", "--top-k", "0"], "top-k"),
    (["bench-topk", "--num-tokens", "0"], "num_tokens must be a positive integer"),
    (["bench-pack", "--hidden-dim", "-4"], "hidden_dim must be a positive integer"),
    (["bench-topk", "--backend", "cuda-magic"], "unknown backend"),
    (["bench-routing", "--strategy", "random"], "unknown routing strategy"),
    (["bench-topk", "--dtype", "float8"], "unknown dtype"),
    (["bench-topk", "--workload", "bursty"], "unknown workload"),
    (["bench-routing", "--capacity-factor", "0"], "capacity factor must be > 0"),
    (["bench-capacity", "--capacity-factors", "1.0,-1"], "capacity factor must be > 0"),
    (["bench-topk", "--iters", "0"], "--iters must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    base = ["--device", "cpu", "--num-experts", "8", "--num-tokens", "16", "--hidden-dim", "8", "--iters", "1"]
    assert main([*argv[:1], *base, *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("moe-bench: error: ") and message in err[-1], err


def test_nan_logits_from_a_recorded_workload_are_rejected(tmp_path, capsys):
    path = tmp_path / "logits.pt"
    bad = torch.randn(10, 8)
    bad[3, 2] = float("nan")
    torch.save(bad, path)
    assert main(["bench-topk", "--device", "cpu", "--num-experts", "8", "--num-tokens", "16", "--hidden-dim", "8",
                 "--workload", f"file:{path}"]) == 2
    assert "NaN or inf" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_device_cuda_without_gpu(capsys):
    assert main(["bench-topk", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_console_script_entry_point_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "moe_routing_bench.cli", "bench-topk", "--top-k", "500",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("moe-bench: error:")


def test_roofline_writes_records_and_png(tmp_path):
    out, png = tmp_path / "r.jsonl", tmp_path / "r.png"
    assert main(["roofline", "--device", "cpu", "--num-tokens", "64", "--hidden-dim", "32", "--num-experts", "8",
                 "--backend", "torch", "--iters", "2", "--out", str(out), "--png", str(png)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["name"] for r in rows} == {"topk", "plan", "route_plan", "pack", "combine", "routing_path"}
    assert all("pct_of_copy" in r for r in rows if r["name"] in ("pack", "combine"))
    for r in rows:  # pack and combine carry the same stage's time on the stream workload
        if r["name"] in ("pack", "combine"):
            assert r["stream_us"] > 0 and r["pct_of_stream"] == pytest.approx(100 * r["stream_us"] / r["median_us"])
        else:
            assert "stream_us" not in r and "pct_of_stream" not in r
    assert png.stat().st_size > 1000


def test_readme_commands_parse_and_validate():
    """Every `moe-bench ...` line of the README is accepted as typed (parsed and validated, not run)."""
    from pathlib import Path

    from moe_routing_bench.harness import ep_bench
    from moe_routing_bench.harness.commands import build_parser, prepare
    from moe_routing_bench.suite.dashboard import add_publish_command

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [[w for w in line.split("#")[0].split() if not w.startswith("[")]  # "[--serve]": optional
             for line in readme.splitlines() if line.startswith("moe-bench ")]
    assert len(lines) >= 10
    for words in lines:
        args = build_parser([add_publish_command]).parse_args(words[1:])
        if args.command == "bench-ep":  # validates its own flags
            ep_bench.config_from_args(args)
            continue
        if args.command in ("env", "publish"):
            continue
        args.device = "cpu"
        args.out = None  # validated, not written
        job = prepare(args)
        assert job.cases and job.backends, words


def test_cache_resident_percentages_are_marked(tmp_path, capsys):
    """CPU pack at a cache-sized shape runs faster than a 64 MiB copy: marked, not reported as bandwidth."""
    from moe_routing_bench.harness.tables import format_table

    text = format_table([{"name": "pack", "pct_of_copy": 250.0, "cache_resident": True},
                         {"name": "combine", "pct_of_copy": 71.5, "cache_resident": False}], ["name", "pct_of_copy"])
    assert "250*" in text and "71.5" in text and "cache_resident: true" in text
    out = tmp_path / "r.jsonl"
    assert main(["bench-routing", *SMALL, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for r in rows:
        if "pct_of_copy" in r:
            assert r["cache_resident"] == (r["pct_of_copy"] > 105)


def test_temperature_reaches_the_router(tmp_path):
    """--temperature changes softk's weights in every routing command (it was ignored outside the layer)."""
    from moe_routing_bench.harness import cases

    seen = []
    real = cases.stage_callables

    def spy(backend, case, inputs):
        seen.append(case.temperature)
        return real(backend, case, inputs)

    cases.stage_callables = spy
    try:
        for command in ("bench-topk", "bench-routing", "bench-pack", "bench-capacity"):
            assert main([command, *SMALL, "--temperature", "0.25"]) == 0
    finally:
        cases.stage_callables = real
    assert seen and set(seen) == {0.25}


@pytest.mark.parametrize("argv", [
    ["bench-topk", "--tokens", "96", "--hidden", "32", "--experts", "8", "--topk", "2"],
    ["bench-routing", "--impl-topk", "torch_soft", "--num-tokens", "96"],
    ["bench-pack", "--impl", "torch", "--output", "OUT"],
])
def test_seed_spellings_are_aliases(argv, tmp_path):
    argv = [str(tmp_path / "o.jsonl") if a == "OUT" else a for a in argv]
    assert main([*argv, "--device", "cpu", "--num-experts", "8", "--iters", "1", "--warmup", "0"]) == 0


def test_an_interrupted_sweep_keeps_every_finished_case(tmp_path, monkeypatch, capsys):
    """Records are appended after each case: Ctrl-C in the third grid point keeps the first two."""
    from moe_routing_bench.harness import commands

    out = tmp_path / "pack.jsonl"
    real, calls = commands._stage_records, []

    def interrupt_third(run, case, stages):
        calls.append(case)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(run, case, stages)

    monkeypatch.setattr(commands, "_stage_records", interrupt_third)
    assert main(["sweep-pack", "--device", "cpu", "--tokens", "16,32,48", "--hidden", "8", "--experts", "4",
                 "--topk", "1", "--iters", "1", "--warmup", "0", "--out", str(out)]) == 130
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["num_tokens"] for r in rows] == [16, 16, 32, 32]
    assert "interrupted" in capsys.readouterr().err
