"""Whether another unit of work (a training run, an asv run, a commit) still fits a time limit.

Machines lent for a limited time (a 10-minute call) should stop starting work that would be cut off:
what finished is kept, and a rerun continues. `Deadline` judges the next unit by the durations of
the units finished so far.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class Deadline:
    """A unit may start while now + estimate(durations so far) ends by `start + seconds`; until
    `always` units have finished, every unit starts (the first ones set the estimate). No limit when
    seconds is None. `estimate`: `max` (units that run side by side), the last one (the first unit
    compiles, later ones reuse its caches), or the mean."""

    def __init__(self, seconds: float | None, start: float | None = None,
                 estimate: Callable[[Sequence[float]], float] = max, always: int = 1):
        self.end = None if seconds is None else (time.time() if start is None else start) + seconds
        self.estimate = estimate
        self.always = always
        self.durations: list[float] = []

    def finished(self, seconds: float) -> None:
        self.durations.append(seconds)

    def allows_start(self) -> bool:
        return (self.end is None or len(self.durations) < self.always
                or time.time() + self.estimate(self.durations) <= self.end)


def last(durations: Sequence[float]) -> float:
    """The estimate by the most recent unit."""
    return durations[-1]


__all__ = ["Deadline", "last"]
