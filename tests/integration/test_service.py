"""The service class in-process: the champion loaded from the trained project's BentoML store, its routes driven
through the ASGI app without a server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bbt.config import load_params
from bbt.vision.faces import Box
from tests.conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(trained_project: Project) -> Iterator[object]:
    """An ActorService instance over the trained project's BentoML store and params.yaml."""
    from _bentoml_sdk.service import set_current_service
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    from bbt.serving.service import ActorService

    previous = os.getcwd()
    os.chdir(trained_project.root)
    BentoMLContainer.model_store.set(ModelStore(trained_project.bentoml_home / "models"))
    instance = None
    try:
        instance = ActorService()
        set_current_service(instance)
        yield instance
    finally:
        if instance is not None:
            instance.sandboxes.close()
        set_current_service(None)
        BentoMLContainer.model_store.reset()
        os.chdir(previous)


@pytest.fixture(scope="module")
def client(service: object) -> Iterator[TestClient]:
    """Calls into BentoML's app for the service (its /classify API, the FastAPI app it mounts, the middlewares),
    over the `service` instance, without a network server. One per module: each app registers its metrics."""
    from _bentoml_impl.server.app import ServiceAppFactory

    from bbt.serving.service import ActorService

    ActorService.inject_config()  # as `bentoml serve` (and Service.to_asgi) does before making the app
    factory = ServiceAppFactory(ActorService, is_main=True)
    app = factory()
    factory._service_instance = service  # what its lifespan would create: this test's instance instead
    yield TestClient(app, raise_server_exceptions=False)


def reviewed_face(project: Project, status: str = "accepted", split: str = "train") -> tuple[bytes, str, Box]:
    """A photo of the split with exactly one reviewed face, of that status: its bytes, label and box."""
    faces = np.load(project.root / "artifacts/faces/faces.npz")
    names = list(faces["images"])
    for i in np.load(project.root / "artifacts/features/split.npz")[split]:
        if names.count(faces["images"][i]) == 1 and str(faces["images"][i]).endswith(".jpg") \
                and faces["status"][i] == status:
            return ((project.root / "data/raw" / str(faces["images"][i])).read_bytes(), str(faces["labels"][i]),
                    Box(*(int(v) for v in faces["boxes"][i])))
    raise AssertionError(f"no single-face {status} photo in the {split} split")


def test_loads_the_champion_once_with_its_registry_version(service, trained_project: Project) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(trained_project.tracking_uri)
    register = load_params(trained_project.root / "params.yaml").register
    client = MlflowClient(trained_project.tracking_uri, trained_project.tracking_uri)
    champion = client.get_model_version_by_alias(register.model_name, register.alias)
    assert service.model_info.name == register.model_name
    assert service.model_info.version == str(champion.version)
    assert service.__is_ready__()
    assert service.classes == ["howard", "leonard", "raj", "sheldon"]
    # The detector settings are the ones the model was trained with (stored in its MLflow metadata), not the
    # fallback of a model that stored none (Haar, full-size decoding).
    from mlflow.models import Model

    from bbt.vision.faces import DetectorSettings

    local = mlflow.artifacts.download_artifacts(champion.source, tracking_uri=trained_project.tracking_uri)
    trained = DetectorSettings.from_metadata(Model.load(f"{local}/MLmodel").metadata["detector"])
    assert DetectorSettings(**service.sandboxes.info["detector"]) == trained
    assert trained == DetectorSettings.of(load_params(trained_project.root / "params.yaml").clean)
    assert (trained.detector, trained.decode_side) != ("haar", 0)


def answer(service: object, data: bytes) -> tuple[list, tuple[int, int]] | object:
    """The service's answer for a photo's bytes, as the routes get it (classified in a photo process)."""
    return asyncio.run(service.answer(data, "photo"))


def test_a_photo_is_classified_in_a_photo_process(service, trained_project: Project) -> None:
    data, label, box = reviewed_face(trained_project)
    faces, (width, height) = answer(service, data)
    assert (width, height) == Image.open(io.BytesIO(data)).size
    best = max(faces, key=lambda f: f.box.iou(box))
    assert best.box.iou(box) >= 0.5 and best.label == label
    # The worker never loaded the model: the photo processes' warm parent did, and forked them.
    workers = psutil.Process(service.sandboxes.zygote.pid).children()
    assert len(workers) == service.sandboxes.processes


def test_what_is_not_an_image_is_refused(service) -> None:
    refused = answer(service, b"hello")
    assert refused.status_code == 400 and b"photo is not a recognised image" in refused.body


def test_routes_in_process(client: TestClient, trained_project: Project) -> None:
    data, label, box = reviewed_face(trained_project)
    answer = client.post("/classify", files={"image": ("a.jpg", data)})
    assert answer.status_code == 200
    # The photo may hold other, unreviewed faces: judge the one at the accepted box.
    faces = answer.json()["faces"]
    index = max(range(len(faces)), key=lambda i: Box(**faces[i]["box"]).iou(box))
    assert Box(**faces[index]["box"]).iou(box) >= 0.5 and faces[index]["label"] == label
    legacy = client.post("/classify_image", data={"image_data": "data:image/jpeg;base64," +
                                                  base64.b64encode(data).decode()})
    # The original route answers one entry per face, in the same order.
    assert legacy.status_code == 200 and legacy.json()[index]["class"] == label
    assert client.post("/classify").status_code == 415
    assert client.post("/classify", files={"image": ("a.txt", b"text")}).json()["error"].startswith(
        "the uploaded file 'a.txt' is not a recognised image")
    too_big = client.post("/classify", files={"image": ("big.jpg", bytes(11 * 1024 * 1024))})
    assert too_big.status_code == 413 and "10 MB" in too_big.json()["error"]
    assert client.get("/classify").status_code == 405 and "error" in client.get("/classify").json()
    page = client.get("/")
    assert page.status_code == 200 and 'content="10485760"' in page.text


def test_a_full_worker_answers_503_with_retry_after_and_recovers(service, client: TestClient,
                                                                 trained_project: Project) -> None:
    data, label, _ = reviewed_face(trained_project)
    admission = service.admission
    assert admission.max_pending == load_params(trained_project.root / "params.yaml").serve.max_pending
    admission.pending = admission.max_pending  # as if the worker were full
    admission.seconds_per_photo = 0.5
    try:
        busy = client.post("/classify", files={"image": ("a.jpg", data)})
        legacy = client.post("/classify_image", data={"image_data": base64.b64encode(data).decode()})
    finally:
        admission.pending = 0
    # max_pending photos at 0.5 s each, two at a time.
    wait = math.ceil(admission.max_pending * 0.5 / 2)
    assert busy.status_code == legacy.status_code == 503
    assert busy.headers["retry-after"] == legacy.headers["retry-after"] == str(wait)
    assert busy.json()["error"] == (f"the service is busy ({admission.max_pending} photos are already in this "
                                    f"worker); retry in {wait} s")
    again = client.post("/classify", files={"image": ("a.jpg", data)})
    assert again.status_code == 200 and label in [face["label"] for face in again.json()["faces"]]
    assert admission.pending == 0 and admission.reserved == 0


@contextmanager
def another_photo_holding(service: object, reserved: int) -> Iterator[None]:
    """As if another photo were in the worker, holding `reserved` bytes of its budget."""
    admission = service.admission
    admission.pending, admission.reserved = 1, reserved
    try:
        yield
    finally:
        admission.pending, admission.reserved = 0, 0


def test_photos_past_the_worker_memory_budget_get_503(service, client: TestClient,
                                                      trained_project: Project) -> None:
    """Each photo reserves its upload once its body has arrived, and what its decoding may take once its photo
    process has read its header; one that does not fit beside the photos in the worker is refused."""
    from bbt.serving.upload_limits import UPLOAD_COPIES

    data, _, _ = reviewed_face(trained_project)
    budget = service.admission.memory_bytes
    body = UPLOAD_COPIES * len(data)
    # Room for its upload, not for its decoding: refused once its header is read (in its process).
    with another_photo_holding(service, budget - body - 1024):
        decoding = client.post("/classify", files={"image": ("b.jpg", data)})
    # No room even for the upload: refused before it reaches a photo process.
    with another_photo_holding(service, budget - body + 1):
        upload = client.post("/classify", files={"image": ("c.jpg", data)})
    for refused in (decoding, upload):
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith("the service is busy (the photos in this worker already hold ")
    assert service.admission.pending == 0 and service.admission.reserved == 0
    assert client.post("/classify", files={"image": ("a.jpg", data)}).status_code == 200


def test_a_photo_past_its_timeout_gets_504_and_its_work_is_killed(service, client: TestClient,
                                                                 monkeypatch) -> None:
    """A JPEG with 10 MB of fill bytes before its scan takes seconds of parsing: answered at serve.timeout_s, its
    photo process killed then (no work outlives the answer) and replaced, and its memory released."""
    from tests.bombs import fill_bomb
    from tests.unit.serving.test_sandbox import cpu_seconds

    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, timeout_s=1))
    before = {p.pid for p in psutil.Process(service.sandboxes.zygote.pid).children()}
    started = time.monotonic()
    late = client.post("/classify", files={"image": ("bomb.jpg", fill_bomb())})
    assert time.monotonic() - started < 2 + 1  # its upload, then timeout_s + 1 s
    assert late.status_code == 504
    assert late.json() == {"error": "classifying the photo took longer than the service's 1 s limit, so it was "
                                    "stopped: retry later, or send a smaller photo"}
    assert service.admission.pending == 0 and service.admission.reserved == 0
    time.sleep(1)
    processes = psutil.Process(service.sandboxes.zygote.pid).children()
    assert {p.pid for p in processes} != before and len(processes) == service.sandboxes.processes
    used = cpu_seconds(processes)
    time.sleep(1)
    assert cpu_seconds(processes) - used < 0.2


def test_the_learned_threshold_travels_with_the_model(service, trained_project: Project) -> None:
    """The service applies the threshold the search learned (model.json), read from the registered model."""
    import json

    learned = json.loads((trained_project.root / "artifacts/model/model.json").read_text())["open_set"]
    assert service.sandboxes.info["open_set_rule"] == learned["rule"] == service.model_info.open_set_rule
    assert service.sandboxes.info["threshold"] == learned["threshold"]
    data, _, box = reviewed_face(trained_project, status="stranger", split="test")
    faces, _ = answer(service, data)
    stranger = max(faces, key=lambda f: f.box.iou(box))
    assert stranger.box.iou(box) >= 0.5 and stranger.label == "unknown"
    assert stranger.distance > stranger.threshold == round(learned["threshold"], 4)
    assert abs(sum(stranger.probabilities.values()) - 1) < 1e-3
