"""Data for the training harness: byte tokenizer, generated stories, split, batches.

Shapes use suffixes: ``_T`` a 1-D token stream, ``_BS`` a [batch, seq_len] batch.

Tokenizer: every UTF-8 byte is a token (``VOCAB_SIZE = 256``), so any text is
encodable, a corpus file's bytes *are* its token ids, and no vocabulary has to
be stored with a checkpoint. Losses are therefore nats per byte
(``bpc = loss / ln 2`` is bits per byte); report them with "byte tokenizer".

Determinism: ``generate_stories`` depends only on ``seed``; ``get_batch`` only on
the ``torch.Generator`` it is given, so the same seed gives the same data order
for every router (paired comparisons); ``eval_batches`` uses no randomness.
"""

from __future__ import annotations

import os
import random
from typing import Iterator, Sequence

import torch

VOCAB_SIZE = 256
STORY_SEPARATOR = "\n\n"  # stories are separated by one blank line
_NL = 10  # byte value of "\n"


# ----------------------------------------------------------------------------- tokenizer

def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a uint8 tensor [T] (cast to int64 when batching)."""
    raw = text.encode("utf-8")
    if not raw:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def decode(ids: torch.Tensor | Sequence[int]) -> str:
    """Inverse of ``encode`` for ids in [0, 256); invalid UTF-8 becomes U+FFFD."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().reshape(-1).tolist()
    return bytes(ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- stories

_GIRLS = ["Lily", "Mia", "Sara", "Anna", "Zoe", "Emma", "Lucy", "Nina", "Ella", "Rosa",
          "Maya", "Ruby", "Ivy", "Amy", "Kate", "Hana", "Lena", "Tara", "Jade", "Nora"]
_BOYS = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Omar", "Finn", "Noah",
         "Luca", "Kai", "Ravi", "Dan", "Hugo", "Eli", "Owen", "Theo", "Ali", "Joe"]
_ANIMALS = ["cat", "dog", "bunny", "bird", "frog", "duck", "fox", "bear", "mouse", "owl",
            "puppy", "kitten", "turtle", "pony", "squirrel", "lamb", "goat", "hedgehog"]
_ANIMAL_NAMES = ["Spot", "Fluffy", "Pip", "Coco", "Bubbles", "Patch", "Sunny", "Whiskers",
                 "Biscuit", "Pepper", "Hopper", "Daisy", "Nutmeg", "Ziggy"]
_ADJ = ["little", "happy", "brave", "shy", "kind", "curious", "silly", "sleepy", "small",
        "clever", "gentle", "busy", "grumpy", "friendly"]
_PLACES = ["the park", "the forest", "the garden", "the beach", "the farm", "the big hill",
           "the pond", "the kitchen", "the school", "the library", "the market", "the lake",
           "the old barn", "the meadow", "the playground", "the river"]
_OBJECTS = ["ball", "kite", "hat", "box", "book", "cake", "flower", "shell", "stone", "cup",
            "drum", "toy car", "blanket", "key", "apple", "balloon", "boat", "map", "bell",
            "crayon", "sock", "feather", "jar", "spoon"]
_COLOURS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "tiny",
            "big", "soft", "old", "new", "striped"]
_FEELINGS = ["happy", "sad", "scared", "excited", "proud", "tired", "surprised", "angry",
             "worried", "calm"]
_PLAY_VERBS = ["play", "run", "jump", "dance", "sing", "hide", "swim", "climb", "draw", "read"]
_TIMES = ["One day", "Once upon a time", "One morning", "One sunny day", "One rainy day",
          "Long ago", "One evening", "On a cold day"]
_WEATHER = ["the sun was warm", "it started to rain", "the wind was strong",
            "the sky was grey", "snow fell softly", "the stars came out"]
_HELPERS = ["mom", "dad", "grandma", "grandpa", "teacher", "big sister", "big brother"]
_LESSONS = ["sharing is good", "it is good to be kind", "friends help each other",
            "it is okay to ask for help", "being brave is not easy but it is good",
            "you should always say sorry", "patience is important", "it is fun to try new things"]


class _Char:
    """A story character: display name with article/pronouns kept consistent."""

    def __init__(self, rng: random.Random):
        kind = rng.random()
        if kind < 0.35:
            self.name, self.he, self.his, self.intro = rng.choice(_GIRLS), "she", "her", "girl"
        elif kind < 0.7:
            self.name, self.he, self.his, self.intro = rng.choice(_BOYS), "he", "his", "boy"
        else:
            self.name, self.he, self.his = rng.choice(_ANIMAL_NAMES), "it", "its"
            self.intro = rng.choice(_ANIMALS)
            if rng.random() < 0.6:
                self.he, self.his = ("she", "her") if rng.random() < 0.5 else ("he", "his")
        self.adj = rng.choice(_ADJ)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _story(rng: random.Random) -> str:
    a, b = _Char(rng), _Char(rng)
    while b.name == a.name:
        b = _Char(rng)
    place, obj, colour = rng.choice(_PLACES), rng.choice(_OBJECTS), rng.choice(_COLOURS)
    verb, feel, helper = rng.choice(_PLAY_VERBS), rng.choice(_FEELINGS), rng.choice(_HELPERS)
    opening = rng.choice([
        f"{rng.choice(_TIMES)}, there was {_a(a.adj)} {a.intro} named {a.name}.",
        f"{rng.choice(_TIMES)}, {_a(a.adj)} {a.intro} called {a.name} went to {place}.",
        f"{a.name} was {_a(a.adj)} {a.intro} who lived near {place}.",
        f"{rng.choice(_TIMES)}, {a.name} the {a.intro} woke up and felt {feel}.",
    ])
    middle = [
        f"{a.he.capitalize()} loved to {verb} at {place}.",
        f"{a.name} found {_a(colour)} {obj} under a tree.",
        f"{a.he.capitalize()} wanted to show the {obj} to {a.his} friend {b.name}.",
        f"{b.name} the {b.intro} said, \"Can I {verb} with you?\"",
        f"\"Yes!\" said {a.name}. \"Let's {verb} together.\"",
        f"But then {rng.choice(_WEATHER)}, and {a.name} felt {rng.choice(_FEELINGS)}.",
        f"{a.name} lost {a.his} {obj} and looked everywhere for it.",
        f"{b.name} helped {a.name} look behind the {rng.choice(_OBJECTS)}.",
        f"They went to {rng.choice(_PLACES)} to find {a.his} {helper}.",
        f"{a.his.capitalize()} {helper} smiled and gave {a.name} {_a(colour)} {rng.choice(_OBJECTS)}.",
        f"{a.name} and {b.name} wanted the same {obj}, and they began to argue.",
        f"{b.name} was {rng.choice(_FEELINGS)} and did not want to {rng.choice(_PLAY_VERBS)}.",
        f"\"Why are you {feel}?\" asked {b.name}.",
        f"{a.name} tried to {rng.choice(_PLAY_VERBS)}, but it was too hard.",
        f"Soon {a.he} saw {_a(rng.choice(_COLOURS))} {rng.choice(_ANIMALS)} near {rng.choice(_PLACES)}.",
        f"Every day, {a.name} would {verb} and count to {rng.randint(2, 20)}.",
    ]
    rng.shuffle(middle)
    body = middle[: rng.randint(3, 7)]
    ending = rng.choice([
        f"In the end, {a.name} and {b.name} became best friends.",
        f"{a.name} learned that {rng.choice(_LESSONS)}.",
        f"They played at {place} until the sun went down, and {a.name} felt {rng.choice(_FEELINGS)}.",
        f"From that day on, {a.name} always took the {obj} to {place}.",
        f"{a.name} said thank you, and everyone was happy.",
        f"That night, {a.name} went to sleep with a big smile.",
    ])
    return " ".join([opening, *body, ending])


def generate_stories(num_stories: int, seed: int = 0) -> str:
    """``num_stories`` template stories separated by a blank line; a function of ``seed`` only.

    Simple English with consistent names and pronouns, a few hundred distinct words
    and sentence shapes in random order, so a small LM learns words and grammar in a
    few dozen steps but cannot memorise the text (about 350 bytes per story).
    """
    if num_stories < 0:
        raise ValueError(f"num_stories must be >= 0, got {num_stories}")
    rng = random.Random(seed)
    return STORY_SEPARATOR.join(_story(rng) for _ in range(num_stories))


# ----------------------------------------------------------------------------- corpus

def load_corpus(path: str | None, *, num_generated_stories: int = 2000, seed: int = 0) -> str:
    """Text of the UTF-8 file at ``path`` (line ends kept as they are), or
    ``generate_stories(num_generated_stories, seed)`` when ``path`` is None.
    Raises FileNotFoundError / ValueError (empty file) naming the path."""
    if path is None:
        return generate_stories(num_generated_stories, seed)
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    if not text:
        raise ValueError(f"data file is empty: {path}")
    return text


def load_tokens(path: str | None, *, num_generated_stories: int = 2000, seed: int = 0) -> torch.Tensor:
    """``encode(load_corpus(...))`` as [T] uint8. A file is read as raw bytes (no decode
    pass): identical for valid UTF-8 and far lighter for the 2 GB TinyStories file."""
    if path is None:
        return encode(generate_stories(num_generated_stories, seed))
    try:
        with open(path, "rb") as f:
            raw = bytearray(os.fstat(f.fileno()).st_size)
            del raw[f.readinto(raw):]  # in place: no second copy of a large file
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    if not raw:
        raise ValueError(f"data file is empty: {path}")
    return torch.frombuffer(raw, dtype=torch.uint8)


def _blank_line_ends(data_T: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Positions p in [lo, hi] with data[p-2:p] == "\\n\\n" (p = first byte after a blank line)."""
    lo, hi = max(lo, 2), min(hi, data_T.numel() - 1)
    if hi < lo:
        return torch.empty(0, dtype=torch.long)
    seg = data_T[lo - 2 : hi]
    hits = (seg[:-1] == _NL) & (seg[1:] == _NL)
    return hits.nonzero().reshape(-1) + lo


def split_train_val(data_T: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream [T] into (train [T1], val [T2]) with T1 + T2 = T, val last.

    The cut is placed at the story boundary (the byte right after a blank line,
    "\\n\\n") nearest to ``round(T * (1 - val_fraction))``, so no story is shared:
    train ends with the separating blank line and val starts with a whole story.
    The search widens from the target until a boundary is found; only when the text
    has no blank line at all (e.g. random characters) is the cut made at the target
    itself. Both parts are non-empty. For a separate validation file (TinyStories
    has a "validation" split, see ``export_tinystories.py``) load it instead of
    splitting the training file.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = data_T.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens to split, got {n}")
    target = min(max(round(n * (1.0 - val_fraction)), 1), n - 1)
    cut, width = None, 1 << 12
    while cut is None:
        ends = _blank_line_ends(data_T, target - width, target + width)
        if ends.numel():
            cut = int(ends[(ends - target).abs().argmin()])  # first of equals: earlier cut
        elif width >= n:
            cut = target
        width *= 4
    return data_T[:cut], data_T[cut:]


# ----------------------------------------------------------------------------- batches

def _windows(data_T: torch.Tensor, starts: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)  # [B, S+1]
    xy = data_T[idx].to(torch.int64)
    x, y = xy[:, :-1], xy[:, 1:]
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


def get_batch(data_T: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator,
              device: str | torch.device = "cpu", *, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: x_BS = data[s : s+S], y_BS = data[s+1 : s+S+1], int64.

    ``batch_size`` is per rank. Every rank draws the *global* batch of
    ``batch_size * world_size`` start offsets from ``generator`` (a CPU generator
    seeded identically on all ranks) and keeps rows ``[rank*B, (rank+1)*B)``. So
    the ranks get different rows, the generators stay in lockstep, and the global
    data order depends only on the seed and the global batch size: one process
    with batch 64 sees exactly the rows that 2 ranks with batch 32 see together.
    """
    n = data_T.numel()
    if n < seq_len + 1:
        raise ValueError(f"need more than seq_len={seq_len} tokens, got {n}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    starts = torch.randint(0, n - seq_len, (batch_size * world_size,), generator=generator)
    return _windows(data_T, starts[rank * batch_size : (rank + 1) * batch_size], seq_len, device)


def num_eval_windows(n_tokens: int, seq_len: int, batch_size: int, max_batches: int | None,
                     stride: int | None = None) -> int:
    """Windows ``eval_batches`` uses over all ranks: every window start s = i*stride with
    s + S + 1 <= T, at most max_batches*B of them (stride None: S, giving (T-1)//S windows)."""
    stride = stride or seq_len
    n = (n_tokens - seq_len - 1) // stride + 1 if n_tokens > seq_len else 0
    return n if max_batches is None else min(n, max_batches * batch_size)


def eval_batches(val_T: torch.Tensor, batch_size: int, seq_len: int, max_batches: int | None,
                 device: str | torch.device = "cpu", *, rank: int = 0, world_size: int = 1,
                 stride: int | None = None, equal_per_rank: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic validation batches (x_BS, y_BS), int64, no randomness.

    Window i covers val[i*stride : i*stride+S+1]. The default stride S gives non-overlapping
    windows, each target token scored once; stride 1 scores every target at every context length
    (the older tool's evaluation). Both average the loss uniformly over the S positions of a
    window, so they estimate the same quantity; stride S at 1/S of the cost. The windows used are
    the first ``num_eval_windows(...)``, the same set for any world size; rank r takes windows r,
    r+W, r+2W, ... in batches of ``batch_size`` (the last one may be smaller), so each rank yields
    at most ``max_batches`` batches. ``max_batches=None`` uses every window. Average the loss
    weighted by tokens (sum over ranks) to get the val loss. ``equal_per_rank`` drops the last
    (fewer than ``world_size``) windows so that every rank yields batches of the same sizes: expert
    parallelism exchanges tokens in every forward, so all ranks must run the same forwards.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    stride = stride or seq_len
    n_win = num_eval_windows(val_T.numel(), seq_len, batch_size, max_batches, stride)
    if equal_per_rank:
        n_win -= n_win % world_size
    if n_win == 0:
        raise ValueError(f"validation text of {val_T.numel()} tokens is too short for seq_len={seq_len}")
    starts = torch.arange(rank, n_win, world_size) * stride
    for i in range(0, starts.numel(), batch_size):
        yield _windows(val_T, starts[i : i + batch_size], seq_len, device)
