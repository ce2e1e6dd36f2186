"""Servers we start or ship: a free loopback port for them, and waiting until their readiness URL answers 200.

The one implementation for the staging copy, EC2, the Prefect server, the tests and the benchmarks.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from bbt.errors import BbtError

# Direct connections only: a proxy from the environment must not answer for the server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotReady(BbtError):
    """A server did not answer 200 in time, or stopped before it did."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` (the OS's choice; free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe(url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status of one GET, or None when nothing answers (refused, reset, timed out)."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def wait_until_ready(url: str, timeout_s: float = 900, interval_s: float = 5,
                     alive: Callable[[], bool] = lambda: True, what: str = "the service", hint: str = "") -> None:
    """Poll `url` until it answers 200; raise NotReady naming the last answer after `timeout_s`.

    `alive` lets the caller stop early when the process behind the URL has died; `hint` ends either message
    with what to check.
    """
    deadline = time.monotonic() + timeout_s
    hint = f": {hint}" if hint else ""
    while True:
        last = probe(url, timeout=min(5.0, max(interval_s, 0.5)))
        if last == 200:
            return
        if not alive():
            raise NotReady(f"{what} stopped before {url} answered (last answer: {last or 'no connection'}){hint}")
        if time.monotonic() >= deadline:
            raise NotReady(f"{url} did not answer 200 within {timeout_s:g} s (last answer: {last or 'no connection'}"
                           f"); {what} may still be starting{hint}")
        time.sleep(interval_s)
