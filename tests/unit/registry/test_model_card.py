"""The model card: built from explicit inputs (every field, deterministic, no markdown injection), kept in a real
MLflow store (require_card), and served by GET /model-card from a generated model folder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from bbt.errors import ModelError
from bbt.registry.model_card import CARD_FILE, CardInputs, build_card, md
from bbt.registry.model_cards import faces_per_split, has_card, log_card, registered_at, require_card
from bbt.serving.model_card_route import PLACEHOLDER, card_and_page, card_response

MODEL_INFO = {
    "candidate": "face_embedding/svm(C=10,kernel=rbf)+nearest_face", "feature_set": "face_embedding",
    "family": "svm", "hyperparameters": {"C": 10, "kernel": "rbf"}, "classes": ["howard", "leonard", "raj", "sheldon"],
    "open_set": {"rule": "nearest_face", "threshold": 0.53125, "min_face_width": 28, "min_sharpness": 0.01,
                 "min_sharpness_named": 0.006},
    "detector": {"detector": "yunet", "yunet_side": 640, "min_score": 0.5, "decode_side": 1280}, "crop_size": 128,
}
METRICS = {"actor_accuracy": 0.96875, "actor_f1": 0.9375, "false_accept_rate": 0.125, "n_actor_faces": 32,
           "n_stranger_faces": 8, "per_class": {"howard": {"recall": 0.75}, "raj": {"recall": 1.0}}}


def inputs(**changes: object) -> CardInputs:
    base = CardInputs(model_name="bbt-actor-classifier", version="7", registered_at="2026-11-26T17:00:00Z",
                      data_hash="0123abcd.dir", corrections_hash="feedc0de", git_commit="a1b2c3d4-dirty",
                      params_hash="9f8e7d", model_md5="5a5a5a", model_info=MODEL_INFO,
                      faces={"train": {"howard": 40, "leonard": 12, "unknown": 30},
                             "test": {"howard": 10, "leonard": 3, "unknown": 8}},
                      test_metrics=METRICS, search={"cv_folds": 5, "objective": "open_set_f05"})
    return replace(base, **changes)


def test_the_card_states_every_field() -> None:
    card = build_card(inputs())
    for expected in ("bbt-actor-classifier version 7", "2026-11-26T17:00:00Z", "0123abcd.dir", "feedc0de",
                     "a1b2c3d4", md(MODEL_INFO["candidate"]), "C=10", "kernel=rbf", md("nearest_face"), "0.5312",
                     md("cv_folds") + "=5", md("open_set_f05"), "actor accuracy: 0.9688", "actor macro F1: 0.9375",
                     "false-accept rate (strangers given an actor's name): 0.1250", "howard 0.7500", "raj 1.0000",
                     "detector=yunet", md("yunet_side") + "=640", "YuNet at 640 px found", "crop size: 128 px",
                     "## Known limitations", "steps of 1/8", "leonard has the fewest training faces (12 of 52)",
                     "dvc repro", "5a5a5a", "9f8e7d", "faces judged from 28 px wide",
                     "\"not one of the four\" is said from sharpness 0.0100", "names from 0.0060"):
        assert expected in card, expected
    assert "| howard | 10 | 40 |" in card and "| strangers (unknown) | 8 | 30 |" in card


PHOTOS = {"faces": {"actor_faces": 187, "actor_recall": 0.9893, "actor_as_other_actor": 0.0},
          "photos": {"photos": 149, "photo_recall": 0.9933},
          "by_width": {"under_32": {"actor_faces": 0, "actor_recall": None},
                       "128_plus": {"actor_faces": 140, "actor_recall": 0.9929, "actor_as_other_actor": 0.0}},
          "confused_pairs": [{"actor": "raj", "other": "sheldon", "faces": 55, "closest_to_other": 0,
                              "named_other": 0, "min_margin": 0.0032, "median_margin": 0.3318}]}


def test_the_card_states_the_band_and_every_figure_of_the_grouped_evaluation() -> None:
    info = {**MODEL_INFO, "open_set": {**MODEL_INFO["open_set"], "band": [0.53125, 0.59]}}
    card = build_card(inputs(model_info=info, photos=PHOTOS))
    for expected in ("over 0.5312 up to 0.5900, where known people and strangers overlap", "cross-validated by photo",
                     f"{md('photo_recall')} 0.9933", f"{md('actor_as_other_actor')} 0.0",
                     f"| {md('under_32')} | 0 | no faces |", f"| {md('128_plus')} | 140 |",
                     "raj to sheldon: min 0.0032, median 0.3318"):
        assert expected in card, expected
    assert "no band" in build_card(inputs()) and "cross-validated by photo" not in build_card(inputs())


def test_the_same_inputs_give_the_same_card_and_another_date_only_its_line() -> None:
    assert build_card(inputs()) == build_card(inputs())
    first, later = build_card(inputs()).splitlines(), build_card(inputs(registered_at="2027-01-01T00:00:00Z")).splitlines()
    assert [(a, b) for a, b in zip(first, later, strict=True) if a != b] == [
        ("- registered: 2026-11-26T17:00:00Z (UTC)", "- registered: 2027-01-01T00:00:00Z (UTC)")]


def test_unmeasured_detector_settings_say_so() -> None:
    card = build_card(inputs(model_info={**MODEL_INFO, "detector": {"detector": "yunet", "yunet_side": 960}}))
    assert "not measured for these settings: run benchmarks/small\\_faces.py" in card


def test_no_value_can_inject_markdown() -> None:
    evil = "x\n# Heading\n[click](http://evil.example) <script>alert(1)</script> `code` *b* | c"
    card = build_card(inputs(model_name=evil, git_commit=evil, data_hash=evil,
                             model_info={**MODEL_INFO, "candidate": evil, "hyperparameters": {"C": evil}},
                             search={"grid": evil}, faces={"train": {evil: 3}, "test": {evil: 1}}))
    assert "\n# Heading" not in card  # values are folded onto their line
    for raw in ("[click]", "<script>", "`code`", "*b*", " | c"):
        assert raw not in card, raw
    assert md(evil) in card and re.search(r"(?<!\\)[\[\]<>`*|]", md(evil)) is None


def test_faces_per_split_counts_each_label() -> None:
    import numpy as np

    labels = np.array(["howard", "raj", "unknown", "howard", "raj"], dtype=object)
    assert faces_per_split(labels, np.array([0, 1, 2]), np.array([3, 4])) == {
        "train": {"howard": 1, "raj": 1, "unknown": 1}, "test": {"howard": 1, "raj": 1}}


def test_card_inputs_count_the_split_files_and_prefer_what_the_version_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from bbt import artifacts
    from bbt.config import Params
    from bbt.registry.model_cards import card_inputs

    monkeypatch.chdir(tmp_path)
    artifacts.FACES.parent.mkdir(parents=True)
    artifacts.SPLIT.parent.mkdir(parents=True)
    np.savez(artifacts.FACES, labels=np.array(["raj", "raj", "unknown", "sheldon"]))
    np.savez(artifacts.SPLIT, train=np.array([0, 2, 3]), test=np.array([1]))
    recorded = {"data_hash": "then.dir", "corrections_hash": "c0", "git_commit": "abc123", "params_hash": "p0"}
    got = card_inputs(Params(), "m", "4", "2026-11-26T00:00:00Z", MODEL_INFO, "md5", {**METRICS, "answers": ["raj"]},
                      "today", recorded)
    assert got.faces == {"train": {"raj": 1, "sheldon": 1, "unknown": 1}, "test": {"raj": 1}}
    assert (got.data_hash, got.corrections_hash, got.git_commit, got.params_hash) == ("then.dir", "c0", "abc123", "p0")
    assert "answers" not in got.test_metrics and got.search["objective"] == Params().search.objective
    today = card_inputs(Params(), "m", "4", "2026-11-26T00:00:00Z", MODEL_INFO, "md5", METRICS, "today", {})
    assert today.params_hash == "today" and today.data_hash == "unknown"  # no data.dvc here


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    """A real SQLite MLflow store with one registered model of two versions: one from a run, one from a
    logged model (how mlflow.sklearn.log_model registers)."""
    folder = tmp_path_factory.mktemp("mlflow")
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("cards", artifact_location=(folder / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.create_registered_model("m")
    client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    logged = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
    client.create_model_version("m", f"models:/{logged.model_id}", run_id=run.info.run_id)
    yield client
    mlflow.set_tracking_uri(tracking)  # MLflow's process-wide URIs come back for the tests that follow
    mlflow.set_registry_uri(registry)


def test_require_card_names_the_version_and_the_fix_when_there_is_none(client: MlflowClient) -> None:
    with pytest.raises(ModelError, match=r"m version 1 has no model card: run `bbt card --write 1`"):
        require_card(client, "m", "1")
    with pytest.raises(ModelError, match=r"m version 99 is not in the MLflow registry"):
        require_card(client, "m", "99")


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_logged_card_is_required_back_and_pointed_at_by_tag_and_description(client: MlflowClient,
                                                                               version: str) -> None:
    card = build_card(inputs(version=version))
    uri = log_card(client, "m", version, card)
    assert require_card(client, "m", version) == card
    assert has_card(client, "m", version)
    found = client.get_model_version("m", version)
    assert found.tags["model_card"] == uri and uri.endswith(CARD_FILE) and uri in found.description
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", registered_at(client, "m", version))
    if version == "2":  # in the logged model's own folder: what bentoml.mlflow.import_model copies
        files = [a.path for a in client.list_logged_model_artifacts(found.source.removeprefix("models:/"))]
        assert CARD_FILE in files


def test_an_unreadable_card_is_a_clear_error(client: MlflowClient, tmp_path: Path) -> None:
    client.create_model_version("m", "file:///nowhere")
    version = str(max(int(v.version) for v in client.search_model_versions("name = 'm'")))
    client.set_model_version_tag("m", version, "model_card", (tmp_path / "gone.md").as_uri())
    with pytest.raises(ModelError, match=rf"m version {version}'s model card .* cannot be read"):
        require_card(client, "m", version)


def app_for(model_dir: Path) -> TestClient:
    """The route as the service wires it: the card read once from the model folder, the page's link filled in."""
    card, page = card_and_page(model_dir, f"<footer><span {PLACEHOLDER}>model card</span></footer>")
    app = FastAPI()

    @app.get("/")
    async def index() -> str:
        return page

    @app.get("/model-card")
    async def model_card(request: Request) -> object:
        return card_response(card, request)

    return TestClient(app)


def test_the_route_serves_the_card_as_markdown_or_as_an_escaped_page(tmp_path: Path) -> None:
    card = build_card(inputs(model_name="<script>alert(1)</script>"))
    (tmp_path / CARD_FILE).write_text(card, encoding="utf-8")
    http = app_for(tmp_path)
    markdown = http.get("/model-card", headers={"Accept": "text/markdown"})
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == card
    page = http.get("/model-card", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and "&lt;script" in page.text and "<pre" in page.text
    assert "hidden" not in http.get("/").text


def test_without_a_card_the_route_is_a_json_404_and_the_link_is_hidden(tmp_path: Path) -> None:
    http = app_for(tmp_path)
    answer = http.get("/model-card")
    assert answer.status_code == 404 and "no model card" in answer.json()["error"]
    assert "bbt card --write" in answer.json()["error"]
    assert "<span hidden>" in http.get("/").text
