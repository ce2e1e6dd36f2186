"""Progress display for long loops: a live bar on a terminal, periodic log lines elsewhere (DVC, Prefect)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("bbt.pipeline.progress")


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    """Yield an `advance()` callable; report progress of `total` steps."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)
        return
    done = 0
    started = last = time.monotonic()

    def advance() -> None:
        nonlocal done, last
        done += 1
        now = time.monotonic()
        if now - last >= 5 or done == total:
            last = now
            log.info("%s: %d/%d (%.0f s)", description, done, total, now - started)

    yield advance
