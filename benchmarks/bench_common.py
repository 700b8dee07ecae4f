"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats):
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def longest_drain(session, job):
    """Drain like the UI timer until ``job`` ends; return the longest single drain call (s)."""
    durations = []
    while job.active:
        session.longest_drain_s = 0.0
        session.drain(timeout=0.2)
        durations.append(session.longest_drain_s)
    assert job.state == "done", job.message
    return max(durations)
