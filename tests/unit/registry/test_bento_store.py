"""The BentoML store import: a fresh MLflow store's version 1 is not another store's version 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bentoml
import mlflow
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from bbt.registry.bento_store import import_version
from bbt.registry.tracking import setup_tracking

NAME = "bbt-actor-classifier"


def register_dummy(constant: str) -> str:
    X, y = np.zeros((4, 2)), np.array(["howard", "raj", "howard", "raj"])
    model = DummyClassifier(strategy="constant", constant=constant).fit(X, y)
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(model, name="model", registered_model_name=NAME,
                                          pip_requirements=["scikit-learn"])
    return str(logged.registered_model_version)


@pytest.fixture(autouse=True)
def restore_mlflow_uris() -> Iterator[None]:
    """setup_tracking sets MLflow's process-wide URIs; other tests must not inherit this test's stores."""
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def test_same_version_number_from_another_store_is_imported_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.chdir(tmp_path)
    tags = []
    for store, actor in (("first", "howard"), ("second", "raj")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/{store}/mlflow.db")
        setup_tracking()
        version = register_dummy(actor)
        assert version == "1"
        tags.append(import_version(NAME, version))
        assert import_version(NAME, version) == tags[-1]  # the same model again: reused, not re-imported
    assert tags[0] != tags[1]
    served = bentoml.mlflow.load_model(bentoml.models.get(f"{NAME}:latest"))
    assert served.predict(np.zeros((1, 2)))[0] == "raj"
