"""Process memory tuning for the serving workers."""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc mallopt parameters
MB = 1024 * 1024


def return_big_frees_to_the_os() -> None:
    """Allocate big blocks (decoded photos) with mmap, so freeing them shrinks the process again.

    glibc raises its mmap threshold after the first big free and then keeps such blocks in its heap arenas
    (one per thread), where photos of different sizes fragment it: resident memory creeps up over a long run.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 * MB)
    libc.mallopt(M_ARENA_MAX, 2)
