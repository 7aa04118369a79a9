"""Property test of the CLI's error policy (issue 12): for generated command lines of every
subcommand, `moe-bench` exits 0 having written valid records, or exits 2 with exactly one line
`moe-bench: error: ...` on stderr, no traceback, and nothing written.

Most generated lines hold at least one bad value and fail before any work; the valid ones run
in-process at tiny sizes (--iters 1 --warmup 0, CPU, torch backend), with the copy and matmul
ceilings stubbed (they are measured at fixed sizes and would dominate the run time).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

from moe_routing_bench.cli import main
from moe_routing_bench.harness import timing

EXAMPLES = 520
ROUTING_COMMANDS = ["quick", "bench-topk", "bench-routing", "bench-pack", "bench-pack-only", "bench-combine-only",
                    "bench-moe-layer", "sweep-pack", "sweep-capacity", "bench-capacity", "roofline"]
LIST_SIZES = {"sweep-pack": ("--tokens", "--hidden", "--experts", "--topk"),
              "sweep-capacity": ("--experts", "--topk")}
PLAN_COMMANDS = {"quick", "bench-routing", "bench-pack", "bench-pack-only", "bench-combine-only", "bench-moe-layer",
                 "sweep-pack", "roofline"}
FACTOR_COMMANDS = {"sweep-capacity", "bench-capacity"}
FILES: dict[str, Path] = {}  # made once per session by the `files` fixture


def _mixed(valid: list, invalid: list, p_invalid: float = 0.12):
    """Mostly a valid value, sometimes a bad one."""
    repeat = max(1, round(len(invalid) * (1 - p_invalid) / (p_invalid * len(valid))))
    return st.sampled_from([*valid * repeat, *invalid])  # about p_invalid of the draws are bad


def _chance(p: float):
    return st.sampled_from([True] + [False] * (round(1 / p) - 1))


SIZE = {"--num-tokens": (["1", "3", "16", "33"], ["0", "-5", "x", "", "1.5", "10000000000000"]),
        "--hidden-dim": (["1", "4", "8"], ["0", "-1", "h", "", "1e3"]),
        "--num-experts": (["2", "4", "8"], ["0", "-2", "", "four"]),
        "--top-k": (["1", "2"], ["0", "9", "-1", ""])}
ALIASES = {"--num-tokens": "--tokens", "--hidden-dim": "--hidden", "--num-experts": "--experts", "--top-k": "--topk"}


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from([*ROUTING_COMMANDS, "env", "publish"]))
    argv = [command]
    if command == "publish":
        argv += draw(st.sampled_from([["--config", str(FILES["missing"])], ["--bogus"], ["--serve", "--config", ""],
                                      ["--config"]]))
        return argv
    if draw(_chance(0.04)):
        argv.append(draw(st.sampled_from(["--bogus", "--iters=", "extra-positional", "--top_k", "--num-tok"])))
    argv += ["--device", draw(_mixed(["cpu"], ["cuda", "tpu", "", "cuda:99"], 0.05))]
    argv += ["--out", draw(_mixed([str(FILES["out"])], [str(FILES["dir"]), "/proc/no/such", ""], 0.06))]
    if command == "env":
        return argv
    lists = LIST_SIZES.get(command, ())
    for flag, (good, bad) in SIZE.items():
        spelled = ALIASES[flag] if flag in lists or ALIASES[flag] in lists or draw(st.booleans()) else flag
        value = draw(_mixed(good, bad, 0.05))
        if spelled in lists and draw(st.booleans()) and value in good:
            value = f"{value},{draw(st.sampled_from(good))}"
        if spelled in lists and draw(_chance(0.05)):
            value = draw(st.sampled_from([",", "1,,2", " "]))
        argv += [spelled, value]
    argv += ["--iters", draw(_mixed(["1"], ["0", "-1", "many"], 0.05)),
             "--warmup", draw(_mixed(["0"], ["-1", "w"], 0.04))]
    backend_flag = draw(st.sampled_from(["--backend", "--impl", "--impl-topk"]))
    argv += [backend_flag, draw(_mixed(["torch", "torch_soft", "torch,torch_soft"],
                                       [",", "", "cuda-magic", "torch,,", " , "], 0.08))]
    argv += ["--dtype", draw(_mixed(["float32", "bf16", "fp16", "float16"], ["float8", "int8", ""], 0.04))]
    argv += ["--seed", draw(_mixed(["0", "17", "123456789"], ["-1", "1e3", str(2**64)], 0.04))]
    argv += ["--workload", draw(_mixed(["uniform", "zipf", "hot", "balanced", "stream", f"file:{FILES['good8']}"],
                                       ["bursty", "file:", f"file:{FILES['missing']}", f"file:{FILES['empty']}",
                                        f"file:{FILES['rows0']}", f"file:{FILES['ints']}", f"file:{FILES['dir']}",
                                        f"file:{FILES['pickle']}", f"file:{FILES['nan']}", f"file:{FILES['text']}",
                                        f"file:{FILES['one_d']}"], 0.1))]
    argv += ["--strategy", draw(_mixed(["softk", "top1", "topk-hard", "hash", "expert-choice", "aux-free",
                                        "topk_softmax_renorm"], ["random", ""], 0.04))]
    argv += ["--temperature", draw(_mixed(["1.0", "0.5", "2"], ["0", "-1", "nan", "inf", "warm"], 0.05))]
    if draw(st.booleans()):
        argv += ["--soft-normalize", draw(_mixed(["softmax", "sum"], ["max"], 0.05))]
    if command in PLAN_COMMANDS:
        argv += ["--capacity-factor", draw(_mixed(["1.0", "1.25", "none", "0.5"],
                                                  ["0", "-1", "inf", "nan", "-inf", "big", ""], 0.08))]
    if command in FACTOR_COMMANDS:
        argv += ["--capacity-factors", draw(_mixed(["1.0,1.25", "0.5", "none,2"],
                                                   ["1.0,-1", ",", "", "1,inf", "nan", "1,,2"], 0.08))]
    if command in PLAN_COMMANDS | FACTOR_COMMANDS:
        argv += ["--drop-policy", draw(_mixed(["position", "score"], ["random"], 0.04))]
        if draw(st.booleans()):
            argv.append("--renorm-after-drop")
    if command == "bench-moe-layer":
        argv += ["--expand", draw(_mixed(["1", "2"], ["0", "-1", "x"], 0.05))]
    if command == "roofline":
        argv += ["--png", draw(_mixed([str(FILES["png"])], [str(FILES["dir"]), "/proc/no/such.png"], 0.05))]
    if draw(_chance(0.03)):
        argv.append("--cuda-graph")  # GPU only
    return argv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    FILES.update(out=d / "out" / "records.jsonl", dir=d, missing=d / "missing.pt", empty=d / "empty.pt",
                 rows0=d / "rows0.pt", ints=d / "ints.pt", good8=d / "good8.pt", pickle=d / "pickle.pt",
                 nan=d / "nan.pt", text=d / "text.pt", one_d=d / "one_d.pt", png=d / "plot" / "r.png")
    FILES["empty"].write_bytes(b"")
    torch.save(torch.zeros(0, 8), FILES["rows0"])
    torch.save(torch.ones(5, 8, dtype=torch.int64), FILES["ints"])
    torch.save(torch.randn(5, 8), FILES["good8"])  # valid only where --num-experts is 8
    torch.save({"logits": torch.randn(5, 8), "code": print}, FILES["pickle"])  # a pickle of a function
    bad = torch.randn(5, 8)
    bad[1, 1] = float("nan")
    torch.save(bad, FILES["nan"])
    FILES["text"].write_text("not a tensor\n")
    torch.save(torch.randn(8), FILES["one_d"])
    return FILES


@pytest.fixture(scope="module")
def fast_ceilings():
    """The copy and matmul ceilings are measured at fixed sizes: stubbed here (tests/test_cli.py measures them)."""
    saved = timing.copy_bandwidth, timing.matmul_flops
    timing.copy_bandwidth = lambda *a, **k: 1e10
    timing.matmul_flops = lambda *a, **k: 1e11
    yield
    timing.copy_bandwidth, timing.matmul_flops = saved


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(argv=command_lines())
def test_generated_command_lines_exit_0_with_records_or_2_with_one_line(files, fast_ceilings, tmp_path, argv):
    out, png = files["out"], files["png"]
    before = len(_records(out))
    png_before = png.stat().st_mtime_ns if png.exists() else None
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a default output could only land here
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(argv)
    finally:
        os.chdir(cwd)
    err = stderr.getvalue()
    event(f"exit {rc}")
    event(f"{argv[0]} exit {rc}")
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 2), (argv, rc, err)
    after = _records(out)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("moe-bench: error: "), (argv, err)
        assert len(after) == before, (argv, "records written by a failed run")
        assert (png.stat().st_mtime_ns if png.exists() else None) == png_before, argv
        return
    new = after[before:]
    assert new, (argv, "exit 0 without records")
    assert f"wrote {len(new)} records" in stdout.getvalue()
    if argv[0] != "env":
        assert all(r["device"] == "cpu" and r["torch"] == torch.__version__ and r["iters"] == 1 for r in new), argv
        timed = [r.get("median_us", r.get("avg_ms", r.get("total_ms"))) for r in new]
        assert all(isinstance(t, float) and t > 0 for t in timed), (argv, timed)
    if argv[0] == "roofline":
        assert png.exists() and png.stat().st_size > 1000


def test_every_subcommand_has_a_description_and_defaults_in_its_help(capsys):
    from moe_routing_bench.harness.commands import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in [*ROUTING_COMMANDS, "env"]:
        parser = sub.choices[command]
        actions = [a for a in parser._actions if a.dest != "help"]
        assert parser.description and all(a.help for a in actions), command
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert text.startswith(f"usage: moe-bench {command}")
        assert text.count("(default:") == len(actions), command
        if command in ("sweep-pack", "sweep-capacity", "roofline"):
            assert "(default: runs/" in text  # default outputs go under the ignored runs/, said in --help
