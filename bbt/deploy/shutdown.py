"""SIGTERM (what systemd, Docker and CI send) stops a long-running command the way Ctrl-C does, and a server
the command started stops with every process under it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import psutil

# How long a stopped server may take to finish by itself before what is left of it is killed: a few seconds,
# so Ctrl-C or SIGTERM stops `bbt deploy staging` promptly even while workers decode photos.
STOP_GRACE_S = 5.0


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, so every `finally` and context
    manager that cleans up after Ctrl-C (stopping child processes, removing work folders) runs for it too."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process_tree(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stop a server started in its own session (`start_new_session=True`) and every process under it: SIGTERM
    to its process group, then, after `grace_s`, SIGKILL to whatever of the tree is left.

    The tree is found from the server's own process, not its process group: BentoML's supervisor starts each
    worker in a process group of its own, which a signal to the supervisor's group misses, and a worker busy on a
    photo when its supervisor exits lives on as an orphan until the photo is done."""
    if process.poll() is not None:
        return
    tree = descendants([process.pid])  # before the signal: an orphan's parent is no longer the server
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    left = wait_for_exit(tree, deadline)
    if process.poll() is None or left:
        left = [*left, *descendants([p.pid for p in left])]  # and any a worker started meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for survivor in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivor.kill()
        process.wait()
        wait_for_exit(left, time.monotonic() + grace_s)


def descendants(pids: list[int]) -> list[psutil.Process]:
    """Every process under the given ones (children, theirs, ...)."""
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found += psutil.Process(pid).children(recursive=True)
    return found


def wait_for_exit(processes: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait until each process has exited or `deadline` (time.monotonic) passes; returns those still running.
    An exited orphan nobody reaps is a zombie: it counts as exited (it holds no memory and runs nothing)."""
    while True:
        running = [p for p in processes if is_running(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def is_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
