"""The upload middleware without a server: a body's read deadline (408) and the cap on a client's open uploads (429)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import pytest

from bbt.config import ServeParams
from bbt.serving.upload_limits import UploadLimit, UploadTimedOut, client_address


@dataclass
class FakeService:
    settings: ServeParams
    upload_limits: dict[str, int] = field(default_factory=lambda: {"/classify": 1_000_000})


def scope(client: str = "127.0.0.1", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http", "method": "POST", "path": "/classify", "client": (client, 50000),
            "headers": headers or []}


def trickle(seconds_per_byte: float):
    """An ASGI receive that sends one byte every `seconds_per_byte`, forever."""
    async def receive() -> dict:
        await asyncio.sleep(seconds_per_byte)
        return {"type": "http.request", "body": b"x", "more_body": True}
    return receive


async def read_body(scope: dict, receive, send) -> None:
    """The app: reads the whole body, then answers 200."""
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_body_trickling_past_the_upload_timeout_is_cut_off_with_408() -> None:
    service = FakeService(ServeParams(upload_timeout_s=0.5))
    limit = UploadLimit(read_body, service=lambda: service)
    started = time.monotonic()
    with pytest.raises(UploadTimedOut) as refused:
        asyncio.run(limit(scope(), trickle(0.05), lambda message: asyncio.sleep(0)))
    assert 0.5 <= time.monotonic() - started < 1.5
    assert refused.value.status_code == 408
    assert refused.value.detail == ("the upload did not arrive within the service's 0.5 s: send the photo again "
                                    "on a faster connection, or a smaller photo")
    assert not limit.open_uploads  # its place among the client's uploads is free again


def test_a_client_past_its_open_uploads_gets_429_and_others_do_not() -> None:
    service = FakeService(ServeParams(upload_timeout_s=0.3, max_uploads_per_client=2))
    limit = UploadLimit(read_body, service=lambda: service)
    answers: dict[str, list[dict]] = {}

    async def request(client: str, name: str) -> None:
        sent: list[dict] = answers.setdefault(name, [])

        async def send(message: dict) -> None:
            sent.append(message)

        try:
            await limit(scope(client), trickle(0.01), send)
        except UploadTimedOut:
            sent.append({"type": "timed out"})

    async def main() -> None:
        slow = [asyncio.create_task(request("10.0.0.1", f"slow{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        await request("10.0.0.1", "third")  # the same client, a third upload at once
        await request("10.0.0.2", "other")
        await asyncio.gather(*slow)

    asyncio.run(main())
    third = answers["third"]
    assert third[0]["status"] == 429 and (b"retry-after", b"1") in third[0]["headers"]
    assert json.loads(third[1]["body"])["error"].startswith("10.0.0.1 already has 2 uploads open in this worker")
    # Another client is not refused (its trickle is cut at the deadline like the first two).
    assert answers["other"] == [{"type": "timed out"}]
    assert answers["slow0"] == answers["slow1"] == [{"type": "timed out"}]


def test_the_client_is_its_address_or_the_local_nginx_forwarded_one() -> None:
    forwarded = [(b"x-real-ip", b"203.0.113.9")]
    assert client_address(scope("192.0.2.7")) == "192.0.2.7"
    assert client_address(scope("127.0.0.1", forwarded)) == "203.0.113.9"  # nginx on this machine
    assert client_address(scope("192.0.2.7", forwarded)) == "192.0.2.7"  # a remote client cannot pick one
    assert client_address(scope("::1")) == "::1"
