"""BentoML's supervisor (a circus arbiter): replaces a dead worker promptly, and runs the service's warm parent.

The arbiter notices a dead worker only when it next checks its processes, and BentoML sets that check to every
10 s (circus' own default is 1 s): a worker killed by the kernel (out of memory, kill -9) was replaced 0-10 s
late, on top of the new worker's start-up. `supervise` makes the arbiter `bentoml serve` creates in this process
check every CHECK_DELAY_S, and start the photo processes' warm parent (bbt/serving/sandbox_process.py) once for
the whole service, so that a new worker only connects to it instead of loading the model (seconds); it starts
the warm parent again when it ends (ParentKeeper).
bbt/serving/service.py calls it when imported: `bentoml serve` (bbt serve, staging, the EC2 unit) imports the
service in its supervisor process before it creates the arbiter.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bbt.serving.supervisor")
CHECK_DELAY_S = 1.0
WORKERS_WATCHER = "service"  # the name BentoML gives its API workers' watcher
# Workers that may wait to be greeted while the warm parent loads (each connects once, at start-up).
BACKLOG = 64
# Seconds between the starts of a warm parent that keeps ending, by how many times in a row it ended young.
RESTART_BACKOFF_S = (0.0, 1.0, 5.0, 30.0)
YOUNG_S = 30.0  # a parent that ends sooner after its start counts as ending young (a crash loop)

# What the warm parent runs, asked for when the arbiter is made: (factory, argument), or None (no model: the
# workers refuse to start with the reason).
PhotoWork = Callable[[], tuple[str, str] | None]


def start_shared_parent(work: tuple[str, str], name: str = "") -> tuple[str, Any]:
    """The service's warm parent, listening on an abstract unix socket (a new name, or `name` again for a
    replacement): its name, and the process. It dies with this process (PR_SET_PDEATHSIG), after the workers the
    arbiter stops first."""
    from bbt.serving.sandbox import abstract_address
    from bbt.serving.sandbox_process import start_warm_parent

    name = name or f"bbt-photo-parent-{secrets.token_hex(16)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(abstract_address(name))
    listener.listen(BACKLOG)
    process = start_warm_parent(*work, listener=listener)
    listener.close()  # the parent's copy listens; connections wait in its backlog while it loads
    return name, process


class ParentKeeper:
    """The service's warm parent, started again under its name when it has ended (killed, out of memory): the
    workers connect to the new one (bbt/serving/sandbox.py). A parent that keeps ending young (killed as it loads
    the model, say for memory) is started again after growing pauses, at most RESTART_BACKOFF_S[-1] seconds.
    (A model that fails to load does not end it: it tells each worker why.)"""

    def __init__(self, work: tuple[str, str]) -> None:
        self.work = work
        self.name, self.process = start_shared_parent(work)
        self.pidfd = os.pidfd_open(self.process.pid)
        self.started = time.monotonic()
        self.restarts = 0

    def ended(self) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def check(self) -> None:
        """Start a new parent if this one has ended (the arbiter reaps it: it waits for any child)."""
        if not self.ended():
            return
        backoff = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
        if time.monotonic() - self.started < backoff:
            return
        try:
            name, process = start_shared_parent(self.work, self.name)
        except OSError as err:  # its name not yet free (seen for a moment after the old one ended): next check
            log.warning("could not start the photo processes' parent again yet: %s", err)
            return
        log.warning("the photo processes' parent (pid %s) had ended: started a new one (pid %s)",
                    self.process.pid, process.pid)
        os.close(self.pidfd)
        self.name, self.process, self.pidfd = name, process, os.pidfd_open(process.pid)
        # Quick successive deaths back off; one after a healthy run starts again at once.
        self.restarts = self.restarts + 1 if time.monotonic() - self.started < YOUNG_S else 0
        self.started = time.monotonic()


def supervise(photo_work: PhotoWork | None = None, check_delay_s: float = CHECK_DELAY_S) -> None:
    """Before `bentoml serve` runs in this process: its arbiter checks its workers every `check_delay_s`, and
    starts the warm parent of `photo_work()` for its workers (named to them in SHARED_PARENT_ENV)."""
    from bentoml._internal.utils import circus

    if getattr(circus.Arbiter, "check_delay_s", None) == check_delay_s:
        circus.Arbiter.photo_work = photo_work
        return

    class PromptArbiter(circus.Arbiter):  # type: ignore[misc,name-defined]
        """BentoML's arbiter, checking its workers every `check_delay_s`, with the service's warm parent."""

        photo_work: PhotoWork | None = None

        def __init__(self, watchers: list[Any], *args: Any, **kwargs: Any) -> None:
            super().__init__(watchers, *args, **{**kwargs, "check_delay": check_delay_s})
            from bbt.serving.sandbox import SHARED_PARENT_ENV

            workers = [watcher for watcher in watchers if watcher.name == WORKERS_WATCHER]
            try:
                work = type(self).photo_work() if workers and type(self).photo_work is not None else None
            except Exception:  # the workers then start warm parents of their own, as before
                log.exception("could not tell what the service's warm parent loads; each worker starts its own")
                work = None
            if work is not None:
                self.photo_parent_keeper = ParentKeeper(work)
                self.photo_parent = self.photo_parent_keeper.process
                for watcher in workers:
                    watcher.env = {**(watcher.env or {}), SHARED_PARENT_ENV: self.photo_parent_keeper.name}

        def manage_watchers(self) -> Any:
            """Circus' check of its processes (every `check_delay_s`), the warm parent's included."""
            keeper = getattr(self, "photo_parent_keeper", None)
            if keeper is not None and not self._stopping:
                keeper.check()
                self.photo_parent = keeper.process
            return super().manage_watchers()

    PromptArbiter.check_delay_s = check_delay_s
    PromptArbiter.photo_work = photo_work
    # create_standalone_arbiter (what `bentoml serve` calls) looks the class up in its module when it runs.
    circus.Arbiter = PromptArbiter
