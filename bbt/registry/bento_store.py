"""Copy registry versions into the BentoML model store, so a built bento is pinned and self-contained."""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml

from bbt.errors import ModelError
from bbt.registry.model_card import CARD_FILE, CARD_TAG
from bbt.registry.tracking import setup_tracking, tracking_uri

log = logging.getLogger(__name__)
REGISTRY_VERSION = "registry_version"
REGISTRY_RUN = "registry_run_id"


def import_version(model_name: str, version: str) -> bentoml.Tag:
    """Import one registry version; reuse the newest store entry if it already holds that version.

    The service serves `<name>:latest`, so the newest entry must be the version just imported. Version
    numbers restart in every MLflow store (a fresh clone, a wiped mlruns/), so an entry is only the same
    model when its run id matches too.
    """
    from mlflow import MlflowClient

    setup_tracking()
    found = MlflowClient().get_model_version(model_name, str(version))
    run_id = found.run_id
    try:
        existing = sorted(bentoml.models.list(model_name), key=lambda m: m.info.creation_time)
    except bentoml.exceptions.NotFound:
        existing = []
    # An entry imported before its version's card was written is imported again, card included.
    if existing and existing[-1].info.labels.get(REGISTRY_VERSION) == str(version) \
            and existing[-1].info.labels.get(REGISTRY_RUN) == run_id \
            and (CARD_TAG not in found.tags or (Path(existing[-1].path) / "mlflow_model" / CARD_FILE).is_file()):
        return existing[-1].tag
    model = bentoml.mlflow.import_model(
        model_name,
        f"models:/{model_name}/{version}",
        labels={REGISTRY_VERSION: str(version), REGISTRY_RUN: run_id},
        metadata={"registry_name": model_name, "registry_version": str(version), "registry_run_id": run_id},
    )
    log.info("imported %s version %s into the BentoML store as %s", model_name, version, model.tag)
    return model.tag


def import_champion(model_name: str, alias: str) -> bentoml.Tag:
    """Import the version the alias points at (e.g. models:/bbt-actor-classifier@champion)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    setup_tracking()
    try:
        version = MlflowClient().get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        raise ModelError(
            f"models:/{model_name}@{alias} does not exist in the MLflow store {tracking_uri()}: run `bbt register` "
            "to register the model `dvc repro` trained (artifacts/model), or `make train` to train and register"
        ) from None
    return import_version(model_name, version)

