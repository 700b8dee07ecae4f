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


def set_torch_threads():
    """Torch threads for a benchmark: OMP_NUM_THREADS when set (backend processes inherit it, so
    both sides use the same), else every core. Returns the number."""
    import os

    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    torch.set_num_threads(threads)
    return threads


def interleaved(sides: dict, repeats: int) -> dict:
    """Median seconds of each side's function, one warm-up each, then the sides taken in turn
    ``repeats`` times, so drift on a shared machine hits them alike: {name: seconds}."""
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


class SidesDiffer(SystemExit):
    """The two sides of a side-by-side benchmark do not measure the same thing."""


def require_same(what: str, a, b):
    """Fail loudly (exit status 1) unless both sides agree on ``what`` (model, size, settings)."""
    if a != b:
        raise SidesDiffer(f"benchmark sides differ in {what}: {a!r} != {b!r}")


def require_same_pixels(a, b, atol: float):
    """Both sides made the same image (same model, seed, scheduler and size), or fail loudly."""
    import numpy as np

    require_same("image shape", tuple(a.shape), tuple(b.shape))
    diff = float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
    if diff > atol:
        raise SidesDiffer(f"benchmark sides made different images (max difference {diff:.3g} > {atol}): "
                          "they differ in model, seed or settings")
