"""malloc settings while upscaling: big blocks go back to the system when freed, so memory stays flat.

By default glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB); the
tile-sized arrays of a tiled upscale then come from the heap, and the freed ones stay there
fragmented, so peak RSS grows with the number of tiles (benchmarks/RESULTS.md: 113 MiB beyond the
result at 1024² against 28 with the threshold fixed at 1 MiB). A fixed 1 MiB threshold maps and
unmaps each such block on its own, but every big block then faults its pages in afresh: set for the
whole backend it made CPU diffusion 1.6-1.9x slower (measured here), so it holds only while an
upscale runs and is set back to 32 MiB (glibc's own ceiling, as fast as the default) afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
FLAT = 1 << 20
AFTER = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: where the dynamic threshold ends up
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: when the user sets it, theirs wins
_lock = threading.Lock()
_depth = 0


def _mallopt():
    """glibc's mallopt, or None (musl, macOS, Windows: no mallopt; or the user chose a threshold)."""
    if ENV in os.environ or os.name != "posix":
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


@contextmanager
def flat_heap():
    """Within: blocks of 1 MiB and more are mmapped and returned when freed (nested uses count once).
    Yields whether the setting applies here."""
    global _depth
    mallopt = _mallopt()
    with _lock:
        applied = mallopt is not None and (_depth > 0 or mallopt(M_MMAP_THRESHOLD, FLAT) == 1)
        _depth += applied
    try:
        yield applied
    finally:
        with _lock:
            _depth -= applied
            if applied and _depth == 0:
                mallopt(M_MMAP_THRESHOLD, AFTER)
