"""The service class in-process: the champion loaded from the trained project's BentoML store, its routes driven
through the ASGI app without a server."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bbt.faces import Box
from bbt.images import ImageError
from tests.conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(trained_project: Project) -> Iterator[object]:
    """An ActorService instance over the trained project's BentoML store and params.yaml."""
    from _bentoml_sdk.service import set_current_service
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    from bbt.service import ActorService

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
    from bbt.service import web

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
    champion = MlflowClient(trained_project.tracking_uri, trained_project.tracking_uri).get_model_version_by_alias("bbt-actor-classifier",
                                                                                    "champion")
    assert service.model_info.name == "bbt-actor-classifier"
    assert service.model_info.version == str(champion.version)
    assert service.__is_ready__()
    assert service.classifier.classes == ["howard", "leonard", "raj", "sheldon"]
    # The detector settings are the ones the model was trained with (stored in its MLflow metadata).
    assert service.classifier.detector.settings.scale_factor == 1.3


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
    assert service.settings.max_pending == 16  # params.yaml
    service.pending = service.settings.max_pending  # as if 16 photos were in this worker
    service.seconds_per_photo = 0.5
    try:
        busy = client.post("/classify", files={"image": ("a.jpg", data)})
        legacy = client.post("/classify_image", data={"image_data": base64.b64encode(data).decode()})
    finally:
        service.pending = 0
    # 16 photos at 0.5 s each, two at a time: 4 s.
    assert busy.status_code == legacy.status_code == 503
    assert busy.headers["retry-after"] == legacy.headers["retry-after"] == "4"
    assert busy.json()["error"] == "the service is busy: too many photos are being classified; retry in 4 s"
    again = client.post("/classify", files={"image": ("a.jpg", data)})
    assert again.status_code == 200 and label in [face["label"] for face in again.json()["faces"]]
    assert service.pending == 0


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


def test_legacy_helpers() -> None:
    from bbt.predict import FacePrediction
    from bbt.service import decode_data_url, legacy_face

    assert decode_data_url("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    assert decode_data_url(base64.b64encode(b"abc").decode()) == b"abc"
    with pytest.raises(ImageError, match="base64"):
        decode_data_url("data:image/png;base64,@@@")
    with pytest.raises(ImageError, match=";base64"):
        decode_data_url("data:image/png,abc")
    probabilities = {"howard": 0.1, "leonard": 0.1, "raj": 0.7, "sheldon": 0.1}
    face = FacePrediction(Box(1, 2, 3, 4), "raj", "raj", 0.7, probabilities, 0.3, 0.5)
    assert legacy_face(face, ["howard", "leonard", "raj", "sheldon"]) == {
        "class": "raj", "class_probability": [10.0, 10.0, 70.0, 10.0],
        "class_dictionary": {"howard": 0, "leonard": 1, "raj": 2, "sheldon": 3}}
    stranger = FacePrediction(Box(1, 2, 3, 4), "unknown", "raj", 0.7, probabilities, 0.8, 0.5)
    assert legacy_face(stranger, ["howard", "leonard", "raj", "sheldon"])["class"] == "unknown"
