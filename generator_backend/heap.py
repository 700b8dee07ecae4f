"""The process's malloc settings: big blocks go back to the system when freed, so memory stays flat.

By default glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB); the
tile-sized arrays of a tiled upscale then come from the heap, and freed ones are kept there, so
peak RSS grows with the number of tiles (benchmarks/RESULTS.md, "tiled against untiled": 125 MiB
beyond the result at 1024² against 28 with the threshold fixed). Fixing the threshold at 1 MiB
(mallopt(M_MMAP_THRESHOLD), which also turns the dynamic raise off) maps and unmaps each such
block on its own. Small allocations are untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 20
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: when the user sets it, theirs wins


def flat_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold (once, at serve start); False where it is not glibc, or the user set it."""
    if ENV in os.environ or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt; their allocators return big blocks anyway
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
