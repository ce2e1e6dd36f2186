"""The review app answers its own page only: other web pages open in the reviewer's browser cannot write to it.

- Every request must name the app's own loopback address in `Host` (`127.0.0.1:<port>`, `localhost:<port>` or
  `[::1]:<port>`), or it is refused with a 421: a site whose DNS name was re-pointed at 127.0.0.1 (DNS
  rebinding) is not served.
- Every write (any method but GET, HEAD and OPTIONS) must come from the app's own origin (`Origin`, else
  `Referer`) and carry this run's token in the `X-BBT-Token` header, or it is refused with a 403 and changes
  nothing. The token is random per run of `bbt review` and reaches only the page the app serves; a cross-site form
  can send neither a custom header nor its own origin.
- No other site may frame the page (clickjacking) or embed its images.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

TOKEN_HEADER = "X-BBT-Token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
           (b"cross-origin-resource-policy", b"same-origin"), (b"x-content-type-options", b"nosniff")]


def new_token() -> str:
    """A token for one run of the app: 256 random bits."""
    return secrets.token_urlsafe(32)


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host values that name the app on `port` (and without a port, on 80: browsers leave it out)."""
    hosts = {f"{name}:{port}" for name in LOOPBACK_NAMES}
    return frozenset(hosts | set(LOOPBACK_NAMES) if port == 80 else hosts)


class OwnPageOnly:
    """ASGI middleware enforcing the module's rules before the app sees a request; refusals are JSON
    `{"error": ...}` like the app's own."""

    def __init__(self, app: Any, port: int, token: str) -> None:
        self.app = app
        self.port = port
        self.hosts = loopback_hosts(port)
        self.token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refused = self.refusal(scope["method"], scope["path"], headers)
        if refused is not None:
            status, message = refused
            return await self._refuse(status, message, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)

    def refusal(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) for a request the app must not answer, or None."""
        host = headers.get("host", "")
        own = f"http://127.0.0.1:{self.port}/"
        if host.lower() not in self.hosts:
            return 421, (f"this review app answers only at its own loopback address, not at Host {host!r}: open "
                         f"{own}")
        if method in SAFE_METHODS:
            return None
        what = f"{method} {path} was refused and changed nothing"
        origin = headers.get("origin") or origin_of(headers.get("referer", ""))
        if origin is None:
            return 403, f"{what}: it names no Origin (nor Referer); give verdicts on the review page, {own}"
        if origin.lower() != f"http://{host.lower()}":
            return 403, (f"{what}: it comes from {origin}, not from the review page; give verdicts on the "
                         f"review page, {own}")
        sent = headers.get(TOKEN_HEADER.lower(), "").encode("latin-1")
        if not hmac.compare_digest(sent, self.token):
            return 403, (f"{what}: it lacks this run's review token (the {TOKEN_HEADER} header the page sends), "
                         f"or has another run's: reload the review page, {own}")
        return None

    @staticmethod
    async def _refuse(status: int, message: str, send: Any) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *HEADERS]})
        await send({"type": "http.response.body", "body": body})


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of a URL (a Referer), or None when it has none."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
