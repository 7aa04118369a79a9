"""Deadline: whether another unit of work fits a time limit (the sweep's, the asv tools')."""
import statistics
import time

from moe_routing_bench import Deadline
from moe_routing_bench.harness.deadline import last


def test_no_limit_always_allows():
    d = Deadline(None)
    d.finished(1e9)
    assert d.allows_start()


def test_a_start_only_if_the_longest_unit_so_far_would_end_in_time():
    d = Deadline(100.0, start=time.time())
    assert d.allows_start()  # nothing finished yet: the first units always start
    d.finished(30.0)
    d.finished(5.0)
    assert max(d.durations) == 30.0 and d.allows_start()
    d.finished(101.0)
    assert not d.allows_start()
    late = Deadline(10.0, start=time.time() - 11)
    assert late.allows_start()  # past the end, but no unit has finished: the first wave starts
    late.finished(0.0)
    assert not late.allows_start()


def test_estimates_by_the_last_or_the_mean_unit_and_a_minimum_count():
    now = time.time()
    by_last = Deadline(100.0, start=now, estimate=last, always=2)
    by_last.finished(150.0)  # the first (compiling) run alone would stop a series of noise runs
    assert by_last.allows_start()
    by_last.finished(20.0)
    assert by_last.allows_start()  # judged by the last run, 20 s, not the first, 150 s
    by_last.finished(101.0)
    assert not by_last.allows_start()
    by_mean = Deadline(50.0, start=now, estimate=statistics.fmean)
    by_mean.finished(150.0)
    by_mean.finished(10.0)
    assert not by_mean.allows_start()  # mean 80 s: ends past 50 s
    by_mean.finished(2.0)
    by_mean.finished(2.0)
    assert by_mean.allows_start()  # mean 41 s
