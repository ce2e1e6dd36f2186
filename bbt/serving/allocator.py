"""Process memory tuning for the serving workers."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
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


def reuse_photo_buffers(mmap_from: int = 16 * MB, trim_from: int = 32 * MB) -> None:
    """Keep the buffers of an ordinary photo in the heap between photos (a photo process's setting).

    Mapping every block over 1 MB afresh (return_big_frees_to_the_os) costs a page fault per 4 KB each time: about
    4 ms of CPU a photo on the dataset's JPEGs (benchmarks/sandbox.py). A photo process keeps blocks under
    `mmap_from` (a photo decoded at up to ~1 MP x 14 bytes) and up to `trim_from` of free heap instead; what that
    leaves resident is bounded by retiring the process when it has grown
    (bbt.serving.sandbox_process.RETIRE_AFTER_BYTES).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, mmap_from)
    libc.mallopt(M_TRIM_THRESHOLD, trim_from)


def release_free_heap() -> None:
    """Give the heap's free pages back to the OS (malloc_trim): before forking, so a fork's allocations land on
    fresh pages instead of copying the parent's freed ones."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)
