"""`bbt release` through the real staging (nginx in front of the bento): the champion passes the smoke test and
becomes @production; a deliberately broken version (it names every face Howard) is stopped there, with the
report, and production keeps the version it had."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from bbt import ACTORS
from bbt.release import PRODUCTION_ALIAS, REPORT, STAGING_TAG
from tests.conftest import Project, clone_trained_project

pytestmark = pytest.mark.integration

NAME = "bbt-actor-classifier"


@pytest.fixture(scope="module")
def project(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Releases move aliases and register versions: in a copy of the trained project with stores of its own.
    Its smoke test takes 6 held-out faces per label (30 photos at most, not 60: the suite has 15 minutes)."""
    project = clone_trained_project(trained_project, tmp_path_factory.mktemp("release") / "project")
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["release"]["faces_per_label"] = 6
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def registry(project: Project) -> MlflowClient:
    return MlflowClient(project.tracking_uri, project.tracking_uri)


def names_everyone_howard(project: Project) -> None:
    """Replace artifacts/model with the trained model whose classifier always says Howard, and whose open-set
    threshold names every face: what a bad training run could register."""
    path = project.root / "artifacts/model/model.joblib"
    model = joblib.load(path)
    howard = DummyClassifier(strategy="constant", constant="howard").fit(np.zeros((4, 1)), list(ACTORS))
    model.classifier = Pipeline([*model.classifier.steps[:-1], ("howard", howard)])
    model.threshold = 1e6  # farther than any face: every face is named (finite, so the answers stay JSON)
    joblib.dump(model, path)


def test_the_champion_passes_staging_and_a_broken_version_is_stopped_there(project: Project) -> None:
    client = registry(project)
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)

    released = project.run("bbt", "release", timeout=900)
    assert "Smoke test passed" in released.stdout, released.stdout
    assert str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == champion
    assert client.get_model_version(NAME, champion).tags[STAGING_TAG] == "passed"

    names_everyone_howard(project)
    project.run("bbt", "register")  # registered with its card, not promoted: worse than the champion
    broken = max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    stopped = project.run("bbt", "release", "--version", str(broken), check=False, timeout=900)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert f"version {broken} failed the smoke test in staging" in stopped.stderr
    report = (project.root / REPORT).read_text()
    assert "Smoke test FAILED" in report and "| contract | ok |" in report
    assert "| actors named right | **failed** |" in report
    assert "| strangers not named | **failed** |" in report
    assert str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == champion
    assert client.get_model_version(NAME, str(broken)).tags[STAGING_TAG] == "failed"
