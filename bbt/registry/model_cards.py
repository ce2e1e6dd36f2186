"""Model cards in MLflow: gather a version's card inputs, log the card with the model, and read it back.

The card is a file of the logged model (so `bentoml.mlflow.import_model` copies it into the BentoML store and
every bento) and the version's tag `model_card` points at it; the release step calls `require_card`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from bbt.config import Params
from bbt.errors import ModelError
from bbt.registry.model_card import CARD_FILE, CARD_TAG, CardInputs
from bbt.registry.tracking import corrections_hash, data_hash, git_commit


def registered_at(client: MlflowClient, name: str, version: str) -> str:
    """The version's registration time in UTC (ISO 8601, seconds): the card's date, fixed per version."""
    millis = client.get_model_version(name, str(version)).creation_timestamp
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def faces_per_split(labels: Any, train: Any, test: Any) -> dict[str, dict[str, int]]:
    """Faces per label in the training and the test split ('unknown': strangers)."""
    return {split: dict(sorted(Counter(str(label) for label in labels[index]).items()))
            for split, index in (("train", train), ("test", test))}


def card_inputs(params: Params, name: str, version: str, when: str, model_info: dict, model_md5: str,
                test_metrics: dict, params_hash: str, recorded: Mapping[str, str]) -> CardInputs:
    """A card's inputs from the working tree the register stage runs in (artifacts/, data.dvc, review/); the
    hashes and commit the version recorded at registration (`recorded`: its tags) win over today's."""
    from bbt.artifacts import PHOTOS_REPORT, load_faces, load_split

    train, test = load_split()
    photos = json.loads(PHOTOS_REPORT.read_text()) if PHOTOS_REPORT.is_file() else {}
    faces = faces_per_split(load_faces()["labels"], train, test)
    metrics = {k: v for k, v in test_metrics.items() if k != "answers"}
    return CardInputs(model_name=name, version=str(version), registered_at=when,
                      data_hash=recorded.get("data_hash") or data_hash(),
                      corrections_hash=recorded.get("corrections_hash") or corrections_hash(params.data.corrections),
                      git_commit=recorded.get("git_commit") or git_commit(),
                      params_hash=recorded.get("params_hash") or params_hash, model_md5=model_md5,
                      model_info=model_info, faces=faces, test_metrics=metrics, search=asdict(params.search),
                      photos=photos)


def logged_model_id(found: ModelVersion) -> str | None:
    """The logged model a version was registered from (MLflow 3 registers `models:/<model id>`, and leaves
    model_id empty in a SQLite registry); None for a version registered from a run's folder."""
    if found.model_id:
        return str(found.model_id)
    source = str(found.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def log_card(client: MlflowClient, name: str, version: str, card: str) -> str:
    """Log the card into the version's logged model (or its run, for a version without one) and point the
    version's tag `model_card` and description at it; returns the card's artifact URI."""
    found = client.get_model_version(name, str(version))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CARD_FILE
        path.write_text(card, encoding="utf-8")
        model_id = logged_model_id(found)
        if model_id:
            client.log_model_artifact(model_id, str(path))
            uri = f"{client.get_logged_model(model_id).artifact_location.rstrip('/')}/{CARD_FILE}"
        else:
            client.log_artifact(found.run_id, str(path), "model_card")
            uri = f"{client.get_run(found.run_id).info.artifact_uri.rstrip('/')}/model_card/{CARD_FILE}"
    client.set_model_version_tag(name, str(version), CARD_TAG, uri)
    client.update_model_version(name, str(version), description=f"Model card: {uri} (`bbt card {version}`)")
    return uri


def has_card(client: MlflowClient, name: str, version: str) -> bool:
    return CARD_TAG in client.get_model_version(name, str(version)).tags


def require_card(client: MlflowClient, name: str, version: str) -> str:
    """The version's card (markdown); ModelError naming the version and the fix when it has none."""
    fix = (f"run `bbt card --write {version}` with artifacts/model holding that version's model (or `bbt "
           f"register`, which writes the card of the version it registers or finds)")
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise ModelError(f"{name} version {version} is not in the MLflow registry: give a registered version "
                         "(`bbt card` shows the champion's card)") from None
    uri = found.tags.get(CARD_TAG)
    if not uri:
        raise ModelError(f"{name} version {version} has no model card: {fix}")
    try:
        return mlflow.artifacts.load_text(uri)
    except (MlflowException, OSError) as err:
        raise ModelError(f"{name} version {version}'s model card ({uri}) cannot be read ({err}): {fix}") from None


def write_card(client: MlflowClient, params: Params, version: str, model_info: dict, model_md5: str,
               test_metrics: dict, params_hash: str) -> str:
    """Build the card of `version` (the model artifacts/model holds) and log it; returns its URI."""
    from bbt.registry.model_card import build_card

    name = params.register.model_name
    recorded = client.get_model_version(name, str(version)).tags
    inputs = card_inputs(params, name, version, registered_at(client, name, version), model_info, model_md5,
                         test_metrics, params_hash, recorded)
    return log_card(client, name, version, build_card(inputs))


def alias_version(client: MlflowClient, name: str, alias: str) -> str:
    """The version an alias points at; ModelError when there is none."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        raise ModelError(f"models:/{name}@{alias} does not exist: give a VERSION, or run `bbt register` "
                         "first") from None
