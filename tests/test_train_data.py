"""Data side of the training harness: tokenizer, stories, split, batches, TinyStories export."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train.data import (VOCAB_SIZE, decode, encode, eval_batches, generate_stories, get_batch,
                        load_corpus, load_tokens, split_train_val)

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "train" / "export_tinystories.py"


# ----------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("text", ["", "hello world\n", "naïve café — 東京 🐱\n\nend"])
def test_tokenizer_round_trip(text):
    ids = encode(text)
    assert ids.dim() == 1 and ids.numel() == len(text.encode("utf-8"))
    assert ids.dtype == torch.uint8 and VOCAB_SIZE == 256
    assert ids.tolist() == list(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(ids.tolist()) == text


def test_decode_invalid_utf8_replaces():
    ids = encode("é")[:1]  # half of a 2-byte character
    assert decode(ids) == "\ufffd"


# ----------------------------------------------------------------------------- stories

def test_generate_stories_deterministic_and_varied():
    a, b, c = generate_stories(50, seed=3), generate_stories(50, seed=3), generate_stories(50, seed=4)
    assert a == b
    assert a != c
    stories = a.split("\n\n")
    assert len(stories) == 50 and all(s.strip() == s and s for s in stories)
    assert len(set(stories)) == 50
    assert generate_stories(0) == ""


def test_load_corpus_generated_and_file(tmp_path):
    assert load_corpus(None, num_generated_stories=5, seed=1) == generate_stories(5, 1)
    p = tmp_path / "c.txt"
    p.write_text("One story.\n\nTwo story ü.\n", encoding="utf-8")
    assert load_corpus(str(p)) == "One story.\n\nTwo story ü.\n"
    assert torch.equal(load_tokens(str(p)), encode(load_corpus(str(p))))
    assert torch.equal(load_tokens(None, num_generated_stories=5, seed=1), encode(generate_stories(5, 1)))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_tokens(str(tmp_path / "empty.txt"))


# ----------------------------------------------------------------------------- split

@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5])
def test_split_on_blank_line(frac):
    tokens = encode(generate_stories(200, seed=0))
    train, val = split_train_val(tokens, frac)
    assert train.numel() > 0 and val.numel() > 0
    assert torch.equal(torch.cat([train, val]), tokens)
    assert decode(train[-2:]) == "\n\n"  # train ends with the separating blank line
    assert decode(val[:1]) != "\n"       # val starts with a story
    stories = set(generate_stories(200, seed=0).split("\n\n"))
    assert all(s in stories for s in decode(val).split("\n\n"))  # no story cut in half
    # the nearest boundary: no blank line lies closer to the target than the cut
    raw, target = tokens.tolist(), round(tokens.numel() * (1 - frac))
    bounds = [p for p in range(2, len(raw)) if raw[p - 2] == raw[p - 1] == 10]
    assert train.numel() in bounds
    assert abs(train.numel() - target) == min(abs(p - target) for p in bounds)


def test_split_without_blank_lines_uses_target():
    tokens = encode("abc def " * 100)
    train, val = split_train_val(tokens, 0.25)
    assert train.numel() == 600 and val.numel() == 200


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        split_train_val(encode("a\n\nb"), 0.0)


# ----------------------------------------------------------------------------- batches

def test_get_batch_shapes_and_shift():
    tokens = encode(generate_stories(20, seed=0))
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 4, 16, g, "cpu")
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    full = tokens.to(torch.int64)
    for row_x, row_y in zip(x, y):  # each row is a real window of the text
        starts = [s for s in range(full.numel() - 16) if torch.equal(full[s : s + 16], row_x)]
        assert any(torch.equal(full[s + 1 : s + 17], row_y) for s in starts)


def test_get_batch_deterministic_and_rank_slices():
    tokens = encode(generate_stories(50, seed=0))

    def batches(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return [get_batch(tokens, 3, 8, g, "cpu", **kw)[0] for _ in range(3)]

    a, b, c = batches(1), batches(1), batches(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    # 2 ranks of batch 3 see exactly the rows of 1 rank of batch 6, step by step
    g = torch.Generator().manual_seed(1)
    single = [get_batch(tokens, 6, 8, g, "cpu")[0] for _ in range(3)]
    r0, r1 = batches(1, rank=0, world_size=2), batches(1, rank=1, world_size=2)
    for s, p, q in zip(single, r0, r1):
        assert torch.equal(s, torch.cat([p, q]))


def test_get_batch_too_short():
    with pytest.raises(ValueError):
        get_batch(encode("abc"), 1, 3, torch.Generator(), "cpu")


def test_eval_batches_non_overlapping_bounded_deterministic():
    val = encode(generate_stories(30, seed=5))
    S, B = 32, 4
    out = list(eval_batches(val, B, S, max_batches=3))
    assert len(out) == 3 and all(x.shape == (B, S) and x.dtype == torch.int64 for x, _ in out)
    xs = torch.cat([x for x, _ in out])
    ys = torch.cat([y for _, y in out])
    full = val.to(torch.int64)
    for i in range(xs.shape[0]):  # window i starts at i*S: contiguous, no overlap, no gap
        assert torch.equal(xs[i], full[i * S : i * S + S])
        assert torch.equal(ys[i], full[i * S + 1 : i * S + S + 1])
    again = list(eval_batches(val, B, S, max_batches=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, again))
    # unbounded: every full window once, last batch may be short
    allw = list(eval_batches(val, B, S, max_batches=None))
    assert sum(x.shape[0] for x, _ in allw) == (val.numel() - 1) // S


def test_eval_batches_ranks_partition_the_same_windows():
    val = encode(generate_stories(30, seed=5))
    one = torch.cat([x for x, _ in eval_batches(val, 4, 16, 5)])
    r = [torch.cat([x for x, _ in eval_batches(val, 4, 16, 5, rank=k, world_size=2)]) for k in (0, 1)]
    assert r[0].shape[0] + r[1].shape[0] == one.shape[0] == 20
    assert torch.equal(r[0], one[0::2]) and torch.equal(r[1], one[1::2])
    assert len(list(eval_batches(val, 4, 16, 5, rank=1, world_size=2))) <= 5


# ----------------------------------------------------------------------------- export_tinystories

def _run_export(args, pre="", env_extra=None, cwd=None):
    code = (f"import sys, runpy\n{pre}\nsys.argv = ['export_tinystories.py'] + {list(args)!r}\n"
            f"runpy.run_path({str(EXPORT)!r}, run_name='__main__')\n")
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd or ROOT)


def test_export_without_datasets_exits_2(tmp_path):
    out = tmp_path / "o.txt"
    r = _run_export(["--out", str(out), "--limit", "3"], pre="sys.modules['datasets'] = None")
    assert r.returncode == 2
    assert "pip install datasets" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_export_test_split_is_clear_error(tmp_path):
    r = _run_export(["--split", "test", "--out", str(tmp_path / "o.txt")], pre="sys.modules['datasets'] = None")
    assert r.returncode == 2
    assert "only train and validation" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _fake_datasets(tmp_path, body):
    pkg = tmp_path / "fake" / "datasets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return {"PYTHONPATH": str(tmp_path / "fake")}


def test_export_offline_is_one_line(tmp_path):
    env = _fake_datasets(tmp_path, """
        def load_dataset(*a, **k):
            raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub")
    """)
    out = tmp_path / "o.txt"
    r = _run_export(["--out", str(out)], env_extra=env)
    assert r.returncode == 2, r.stderr
    assert "network access to the Hugging Face hub" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.glob(".*")) == []  # no temp file left


def test_export_writes_clean_stories_atomically(tmp_path):
    env = _fake_datasets(tmp_path, """
        ROWS = [{"text": "  One day.\\r\\nThe end.  "}, {"text": "\\n"}, {"text": "Two é."}, {"text": "Three."}]
        def load_dataset(name, split, streaming=False):
            assert name == "roneneldan/TinyStories" and split in ("train", "validation")
            return iter(ROWS)
    """)
    out = tmp_path / "a" / "b" / "val.txt"
    r = _run_export(["--split", "validation", "--out", str(out), "--limit", "3"], env_extra=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote 2 samples to {out}"
    assert out.read_text(encoding="utf-8") == "One day.\nThe end.\n\nTwo é.\n"
    assert [p.name for p in out.parent.iterdir()] == ["val.txt"]  # no temp file left
    # the exported file splits at a story boundary
    train, val = split_train_val(load_tokens(str(out)), 0.4)
    assert decode(val) == "Two é.\n"


def test_eval_windows_with_stride():
    """stride 1 (the older tool's evaluation): every start position; stride S: the default windows."""
    val = encode(generate_stories(5, seed=2))
    S = 8
    ones = torch.cat([x for x, _ in eval_batches(val, 16, S, None, stride=1)])
    assert ones.shape[0] == val.numel() - S
    full = val.to(torch.int64)
    assert all(torch.equal(ones[i], full[i:i + S]) for i in range(0, ones.shape[0], 37))
    default = torch.cat([x for x, _ in eval_batches(val, 16, S, None)])
    assert torch.equal(default, torch.cat([x for x, _ in eval_batches(val, 16, S, None, stride=S)]))
    assert torch.equal(default, ones[::S][: default.shape[0]])
