"""BentoML's supervisor (a circus arbiter): replaces a dead worker promptly, and runs the service's warm parent.

The arbiter notices a dead worker only when it next checks its processes, and BentoML sets that check to every
10 s (circus' own default is 1 s): a worker killed by the kernel (out of memory, kill -9) was replaced 0-10 s
late, on top of the new worker's start-up. `supervise` makes the arbiter `bentoml serve` creates in this process
check every CHECK_DELAY_S, and start the photo processes' warm parent (bbt/serving/sandbox_process.py) once for
the whole service, so that a new worker only connects to it instead of loading the model (seconds).
bbt/serving/service.py calls it when imported: `bentoml serve` (bbt serve, staging, the EC2 unit) imports the
service in its supervisor process before it creates the arbiter.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bbt.serving.supervisor")
CHECK_DELAY_S = 1.0
WORKERS_WATCHER = "service"  # the name BentoML gives its API workers' watcher
# Workers that may wait to be greeted while the warm parent loads (each connects once, at start-up).
BACKLOG = 64

# What the warm parent runs, asked for when the arbiter is made: (factory, argument), or None (no model: the
# workers refuse to start with the reason).
PhotoWork = Callable[[], tuple[str, str] | None]


def start_shared_parent(work: tuple[str, str]) -> tuple[str, Any]:
    """The service's warm parent, listening on a new abstract unix socket: its name, and the process. It dies with
    this process (PR_SET_PDEATHSIG), after the workers the arbiter stops first."""
    from bbt.serving.sandbox import abstract_address
    from bbt.serving.sandbox_process import start_warm_parent

    name = f"bbt-photo-parent-{secrets.token_hex(16)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(abstract_address(name))
    listener.listen(BACKLOG)
    process = start_warm_parent(*work, listener=listener)
    listener.close()  # the parent's copy listens; connections wait in its backlog while it loads
    return name, process


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
                name, self.photo_parent = start_shared_parent(work)
                for watcher in workers:
                    watcher.env = {**(watcher.env or {}), SHARED_PARENT_ENV: name}

    PromptArbiter.check_delay_s = check_delay_s
    PromptArbiter.photo_work = photo_work
    # create_standalone_arbiter (what `bentoml serve` calls) looks the class up in its module when it runs.
    circus.Arbiter = PromptArbiter
