"""The service class in-process: the champion loaded from the trained project's BentoML store, its routes driven
through the ASGI app without a server."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bbt.config import load_params
from bbt.vision.faces import Box
from bbt.vision.images import ImageError
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
    try:
        instance = ActorService()
        set_current_service(instance)
        yield instance
    finally:
        set_current_service(None)
        BentoMLContainer.model_store.reset()
        os.chdir(previous)


@pytest.fixture()
def client(service: object) -> Iterator[TestClient]:
    """Calls into the FastAPI app the service mounts, without a network server."""
    from bbt.serving.service import web

    with TestClient(web, raise_server_exceptions=False) as test_client:
        yield test_client


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
    assert service.classifier.classes == ["howard", "leonard", "raj", "sheldon"]
    # The detector settings are the ones the model was trained with (stored in its MLflow metadata), not the
    # fallback of a model that stored none (Haar, full-size decoding).
    from mlflow.models import Model

    from bbt.vision.faces import DetectorSettings

    local = mlflow.artifacts.download_artifacts(champion.source, tracking_uri=trained_project.tracking_uri)
    trained = DetectorSettings.from_metadata(Model.load(f"{local}/MLmodel").metadata["detector"])
    assert service.classifier.detector.settings == trained
    assert trained == DetectorSettings.of(load_params(trained_project.root / "params.yaml").clean)
    assert (trained.detector, trained.decode_side) != ("haar", 0)


def test_classify_bytes_finds_and_names_the_face(service, trained_project: Project) -> None:
    data, label, box = reviewed_face(trained_project)
    faces, (width, height) = service.classify_bytes(data, "photo")
    assert (width, height) == Image.open(io.BytesIO(data)).size
    best = max(faces, key=lambda f: f.box.iou(box))
    assert best.box.iou(box) >= 0.5 and best.label == label


def test_classify_bytes_refuses_what_is_not_an_image(service) -> None:
    with pytest.raises(ImageError, match="not a recognised image"):
        service.classify_bytes(b"hello", "notes.txt")


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


@dataclass
class Hold:
    """Photos wait at the start of face detection until `release` is set; `entered` is set once one waits there
    (its decoding's memory is reserved by then)."""

    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)


@contextmanager
def held_in_detect(service: object) -> Iterator[Hold]:
    hold = Hold()
    original = service.classifier.detect

    def detect(photo, timed):
        hold.entered.set()
        hold.release.wait(60)
        return original(photo, timed)

    service.classifier.detect = detect
    try:
        yield hold
    finally:
        hold.release.set()
        del service.classifier.detect
        deadline = time.monotonic() + 60
        while service.admission.pending and time.monotonic() < deadline:  # the held photos finish
            time.sleep(0.05)


def test_photos_past_the_worker_memory_budget_get_503(service, client: TestClient,
                                                      trained_project: Project) -> None:
    """Each photo reserves its upload (before the body is read) and its decoding's most memory (once its header
    is read); one that does not fit beside the photos in the worker is refused, and nothing stays reserved."""
    from bbt.serving.upload_limits import UPLOAD_COPIES
    from bbt.vision.images import decode_cost

    data, _, _ = reviewed_face(trained_project)
    budget = service.admission.memory_bytes
    try:
        with held_in_detect(service) as hold, ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/classify", files={"image": ("a.jpg", data)})
            assert hold.entered.wait(60), "the first photo never reached detection"
            held = service.admission.reserved
            assert held > UPLOAD_COPIES * len(data) + decode_cost(data, service.classifier.decode_side)
            # Room for the second photo's upload, not for its decoding: refused once its header is read.
            service.admission.memory_bytes = held + UPLOAD_COPIES * (len(data) + 4096)
            decoding = client.post("/classify", files={"image": ("b.jpg", data)})
            # No room even for the upload: refused before its body is read.
            service.admission.memory_bytes = held
            upload = client.post("/classify", files={"image": ("c.jpg", data)})
            hold.release.set()
            assert first.result().status_code == 200
    finally:
        service.admission.memory_bytes = budget
    for refused in (decoding, upload):
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith("the service is busy (the photos in this worker already hold ")
    assert service.admission.pending == 0 and service.admission.reserved == 0


def test_a_photo_past_its_timeout_gets_504_and_its_work_stops(service, client: TestClient,
                                                             trained_project: Project, monkeypatch) -> None:
    """The answer comes at serve.timeout_s; the photo's work, still running then, stops at its next stage and
    holds its memory until it has."""
    data, _, _ = reviewed_face(trained_project)
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, timeout_s=1))
    decided = []
    monkeypatch.setattr(service.classifier.model, "decide", lambda *args: decided.append(args))
    with held_in_detect(service) as hold:
        late = client.post("/classify", files={"image": ("a.jpg", data)})
        assert service.admission.pending == 1  # still detecting
        hold.release.set()
    assert late.status_code == 504
    assert late.json() == {"error": "classifying the photo took longer than the service's 1 s limit, so it was "
                                    "stopped: retry later, or send a smaller photo"}
    assert decided == [] and service.admission.reserved == 0


def test_the_learned_threshold_travels_with_the_model(service, trained_project: Project) -> None:
    """The service applies the threshold the search learned (model.json), read from the registered model."""
    import json

    learned = json.loads((trained_project.root / "artifacts/model/model.json").read_text())["open_set"]
    assert service.classifier.model.rule == learned["rule"] == service.model_info.open_set_rule
    assert service.classifier.model.threshold == learned["threshold"]
    data, _, box = reviewed_face(trained_project, status="stranger", split="test")
    faces, _ = service.classify_bytes(data, "photo")
    stranger = max(faces, key=lambda f: f.box.iou(box))
    assert stranger.box.iou(box) >= 0.5 and stranger.label == "unknown"
    assert stranger.distance > stranger.threshold == round(learned["threshold"], 4)
    assert abs(sum(stranger.probabilities.values()) - 1) < 1e-3
