"""The release gate's checks (bbt/release/smoke.py) on generated answers: a good model passes, a model that names every
face Howard, a stranger-namer, a slow or contract-breaking service, and a down service are each stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from bbt import artifacts
from bbt.config import ReleaseParams
from bbt.release.smoke import LabelledFace, held_out_faces, smoke_test
from bbt.vision.faces import Box

FACES = [LabelledFace(f"{label}/{i}.jpg", Box(10 * i, 10, 40, 40), label)
         for label in ("howard", "leonard", "raj", "sheldon", "unknown") for i in range(1, 4)]


def service(answer: Callable[[LabelledFace], str], version: str = "7", broken: str = "",
            status: int = 200) -> httpx.Client:
    """A generated service: each photo's face gets `answer(face)`; `broken` breaks one part of it."""
    by_name = {Path(f.image).name + f.label: f for f in FACES}
    limited: set[bytes] = set()  # photos refused once

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("//"):  # as a bentoml service answers "//livez"
            return httpx.Response(404)
        if request.url.path in ("/livez", "/readyz"):
            return httpx.Response(503 if broken == "not ready" else 200)
        body = request.content
        photo = next((key for key in (f"{f.label}-{f.box.x}".encode() for f in FACES) if key in body), b"")
        if broken == "rate limited" and photo not in limited:  # nginx's limit: each photo's first try is refused
            limited.add(photo)
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": "too many requests"})
        if b"not a photo" in body:
            return httpx.Response(500 if broken == "500 on bad input" else 400, json={"error": "not an image"})
        face = next(f for key, f in by_name.items() if f"{f.label}-{f.box.x}".encode() in body)
        if broken == "contract":
            return httpx.Response(200, json={"faces": "none"})
        faces = [{"box": face.box.as_dict(), "label": answer(face), "closest_actor": "howard", "confidence": 0.9,
                  "probabilities": dict.fromkeys(("howard", "leonard", "raj", "sheldon"), 0.25), "distance": 0.3, "threshold": 0.5}]
        return httpx.Response(status, json={"faces": faces, "image": {"width": 100, "height": 100},
                                             "model": {"name": "m", "version": version, "open_set_rule": "r"}})

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://service")


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    for face in FACES:
        (tmp_path / face.image).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / face.image).write_bytes(f"{face.label}-{face.box.x}".encode())
    return tmp_path


def run(raw: Path, client: httpx.Client, params: ReleaseParams | None = None, url: str = "http://service",
        **kwargs) -> dict[str, bool]:
    report = smoke_test(url, raw, FACES, params or ReleaseParams(), expect_version="7", client=client,
                        **kwargs)
    assert report.passed == all(c.passed for c in report.checks)
    return {c.name: c.passed for c in report.checks}


def test_a_model_that_answers_right_passes_every_check(raw: Path) -> None:
    checks = run(raw, service(lambda f: f.label))
    assert checks == {"probes": True, "contract": True, "model version": True, "actors named right": True,
                      "strangers not named": True, "latency": True, "bad upload refused": True}


def test_a_load_balancers_url_with_its_trailing_slash_is_tested_alike(raw: Path) -> None:
    assert all(run(raw, service(lambda f: f.label), url="http://service/").values())


def test_a_rate_limited_service_is_waited_out_not_failed(raw: Path) -> None:
    waited: list[float] = []
    assert all(run(raw, service(lambda f: f.label, broken="rate limited"), sleep=waited.append).values())
    assert len(waited) == 16 and min(waited) >= 0.2  # each photo and the bad upload once, never hammering


def test_a_model_that_names_everyone_howard_is_stopped(raw: Path) -> None:
    checks = run(raw, service(lambda f: "howard"))
    assert not checks["actors named right"] and not checks["strangers not named"]


def test_the_wrong_version_a_broken_contract_a_500_or_a_slow_service_is_stopped(raw: Path) -> None:
    assert not run(raw, service(lambda f: f.label, version="6"))["model version"]
    assert not run(raw, service(lambda f: f.label, broken="contract"))["contract"]
    assert not run(raw, service(lambda f: f.label, broken="500 on bad input"))["bad upload refused"]
    ticks = iter(np.arange(0, 100, 1.0))  # every request takes 1 s on this clock
    slow = run(raw, service(lambda f: f.label), ReleaseParams(latency_budget_ms=500), clock=lambda: next(ticks))
    assert not slow["latency"] and slow["actors named right"]


def test_a_service_that_is_not_ready_or_not_there_fails_without_raising(raw: Path) -> None:
    assert run(raw, service(lambda f: f.label, broken="not ready")) == {"probes": False}

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    down = run(raw, httpx.Client(transport=httpx.MockTransport(refuse)))
    assert down == {"reachable": False}


def test_the_faces_come_from_the_test_split_in_a_fixed_order(tmp_path: Path) -> None:
    (tmp_path / artifacts.FEATURES_DIR).mkdir(parents=True)
    (tmp_path / artifacts.FACES).parent.mkdir(parents=True)
    labels = ["howard", "raj", "unknown", "", "howard", "howard"]
    np.savez(tmp_path / artifacts.FACES, labels=np.array(labels), images=np.array([f"p{i}.jpg" for i in range(6)]),
             boxes=np.array([[i, 0, 5, 5] for i in range(6)]))
    np.savez(tmp_path / artifacts.SPLIT, train=np.array([1]), test=np.array([5, 3, 2, 0, 4]))
    chosen = held_out_faces(tmp_path, per_label=2)
    assert [(f.image, f.label) for f in chosen] == [("p0.jpg", "howard"), ("p4.jpg", "howard"),
                                                   ("p2.jpg", "unknown")]
    assert json.dumps([f.box.as_dict() for f in chosen])
