"""Upload limits and errors for the HTTP layer: every refusal is a JSON `{"error": ...}` naming the fix.

`UploadLimit` refuses a body over its route's limit before reading it (413), a body that has not arrived within
serve.upload_timeout_s (408), and a client with serve.max_uploads_per_client uploads already open in this worker
(429). An upload takes no place in the worker's budget (bbt.serving.admission) until its body has arrived: the
route admits it then. `JsonErrors` turns BentoML's own plain-text errors into JSON.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import prometheus_client
from fastapi import Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from bbt.config import ServeParams
from bbt.serving.admission import MB, Busy

# An upload is in memory as the body's chunks, the parsed form part and the bytes read from it.
UPLOAD_COPIES = 3
# Bodies over the limit are read and thrown away up to this size so the client sees the 413, then closed.
DRAIN_LIMIT_BYTES = 64 * MB

# BentoML serves this at /metrics, summed over its worker processes.
REJECTED = prometheus_client.Counter(
    name="bbt_rejected_requests",
    documentation="Requests refused with a 4xx, a 503 (busy) or a 504 (timed out), by HTTP status.",
    labelnames=["status"],
)


class Limited(Protocol):
    """What UploadLimit needs from the running service: its limits (from params.yaml)."""

    upload_limits: dict[str, int]
    settings: ServeParams


class UploadTooLarge(HTTPException):
    """Raised while the body streams in, as soon as it passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is over the {limit / MB:g} MB limit: send a smaller photo "
                              "(resize or re-export it as JPEG)")


class UploadTimedOut(HTTPException):
    """Raised while the body streams in, once serve.upload_timeout_s has passed since the request started."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the upload did not arrive within the service's {timeout_s:g} s: send the photo "
                              "again on a faster connection, or a smaller photo")


def client_address(scope: dict) -> str:
    """Who sent a request: its peer's address, or the X-Real-IP that the nginx on this machine sets (a header is
    trusted only from a loopback peer, so a remote client cannot pick its own address)."""
    host = (scope.get("client") or ("unknown", 0))[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    forwarded = dict(scope.get("headers", [])).get(b"x-real-ip") if loopback else None
    return forwarded.decode("latin-1").strip() if forwarded else host


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if 400 <= status < 500 or status in (503, 504):
        REJECTED.labels(status=str(status)).inc()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def busy_response(err: Busy) -> JSONResponse:
    return error_response(503, f"the service is busy ({err.why}); retry in {err.retry_after} s",
                          {"Retry-After": str(err.retry_after)})


def timed_out_response(timeout_s: float) -> JSONResponse:
    return error_response(504, f"classifying the photo took longer than the service's {timeout_s:g} s limit, "
                               "so it was stopped: retry later, or send a smaller photo")


def field_missing_message(request: Request) -> tuple[int, str]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return 415, (f"POST {request.url.path} needs multipart/form-data with the photo in the field 'image' "
                     f"(got {content_type or 'no content type'}), e.g. curl -F image=@photo.jpg URL/classify")
    return 400, ("the form has no file in the field 'image': send the photo as a file part named 'image', "
                 "e.g. curl -F image=@photo.jpg URL/classify")


class UploadLimit:
    """ASGI middleware for the upload routes: a body over the route's limit is refused with a 413 without being
    buffered, a body still arriving serve.upload_timeout_s after its request started with a 408, and a client
    (by address) that already has serve.max_uploads_per_client requests open in this worker with a 429. Nothing
    here admits a photo into the worker's budget: waiting for a slow body costs a connection, not a place.

    `service()` gives the running service, whose limits come from params.yaml when it starts.
    """

    def __init__(self, app: Any, service: Callable[[], Limited]) -> None:
        self.app = app
        self.service = service
        self.open_uploads: Counter[str] = Counter()  # per client address, in this worker

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = None
        if scope["type"] == "http" and scope["method"] == "POST":
            limit = self.service().upload_limits.get(scope["path"])
        if limit is None:
            return await self.app(scope, receive, send)
        settings = self.service().settings
        deadline = time.monotonic() + settings.upload_timeout_s
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= DRAIN_LIMIT_BYTES:
                await self._drain(receive, deadline)
            return await error_response(413, UploadTooLarge(limit).detail)(scope, receive, send)
        client = client_address(scope)
        if self.open_uploads[client] >= settings.max_uploads_per_client:
            refused = error_response(
                429, f"{client} already has {self.open_uploads[client]} uploads open in this worker (the most one "
                     "client may have): wait for their answers, then retry", {"Retry-After": "1"})
            await self._drain(receive, deadline)
            return await refused(scope, receive, send)
        received, body_done = 0, False

        async def counted() -> dict:
            nonlocal received, body_done
            if body_done:  # after the body, the app waits for the client's disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                raise UploadTimedOut(settings.upload_timeout_s) from None
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if received > limit:  # a chunked body that never declared its length
                raise UploadTooLarge(limit)
            return message

        self.open_uploads[client] += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self.open_uploads[client] -= 1
            if not self.open_uploads[client]:
                del self.open_uploads[client]

    @staticmethod
    async def _drain(receive: Any, deadline: float) -> None:
        """Read and drop the body (so the client reads the answer), up to DRAIN_LIMIT_BYTES and the deadline."""
        drained = 0
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                while drained <= DRAIN_LIMIT_BYTES:
                    message = await receive()
                    drained += len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body"):
                        return
        except TimeoutError:
            return


class JsonErrors:
    """ASGI middleware for the whole server: a plain-text error BentoML's own router answers (an unknown path,
    a wrong method on its routes) becomes `{"error": ...}` like every other error of this service, and so does
    its trailing-slash redirect, whose Location it builds from the Host header (an open redirect): a 404."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}

        async def rewrite(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"text/plain"):
                    held["start"], held["body"] = message, b""
                    return
                if message["status"] in (307, 308) and scope["path"].endswith("/") and scope["path"] != "/":
                    held["start"], held["body"], held["text"] = {**message, "status": 404}, b"", "not found"
                    return
            elif "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                status = held["start"]["status"]
                text = held.get("text") or held["body"].decode("utf-8", "replace").strip() or "error"
                why = f"{scope['method']} {scope['path']}: {text.lower()}"
                if status == 405 and scope["path"] == "/classify":  # the API route, which BentoML answers
                    why += "; send the photo with POST, e.g. curl -F image=@photo.jpg URL/classify"
                if status == 404:
                    why += "; the routes are /, /classify, /classify_image, /feedback, /livez, /readyz, /metrics, /docs and /docs.json"
                body = json.dumps({"error": why}).encode()
                headers = [(k, v) for k, v in held["start"].get("headers", [])
                           if k.lower() not in (b"content-type", b"content-length", b"location")]
                await send({**held["start"], "headers": [*headers, (b"content-type", b"application/json"),
                                                         (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def keep_uploads_in_memory(limit_bytes: int) -> None:
    """Let the multipart parser keep a file part up to the upload limit in memory.

    Starlette spools parts over 1 MB to a temporary file on disk, which the route then reads back: a disk write
    and read per typical 2-5 MB photo. The upload limit and serve.max_pending already bound what a worker holds.
    """
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit_bytes)
