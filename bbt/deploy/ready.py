"""Wait until a URL answers 200: the readiness probe through nginx, for EC2 and for the staging copy."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from bbt.deploy import DeployError

# Direct connections only: a proxy from the environment must not answer for the instance.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
                     alive: Callable[[], bool] = lambda: True, what: str = "the service") -> None:
    """Poll `url` until it answers 200; raise DeployError naming the last answer after `timeout_s`.

    `alive` lets the caller stop early when the process behind the URL has died.
    """
    deadline = time.monotonic() + timeout_s
    last: int | None = None
    while True:
        last = probe(url, timeout=min(5.0, max(interval_s, 0.5)))
        if last == 200:
            return
        if not alive():
            raise DeployError(f"{what} stopped before {url} answered (last answer: {last or 'no connection'})")
        if time.monotonic() >= deadline:
            raise DeployError(f"{url} did not answer 200 within {timeout_s:g} s "
                              f"(last answer: {last or 'no connection'}); {what} may still be starting: "
                              "check it with `bbt deploy status`, or its logs")
        time.sleep(interval_s)
