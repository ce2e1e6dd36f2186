"""Issue 16 from a trained project: the champion passes the smoke test in the real staging (nginx in front of the
bento) and becomes @production; a deliberately broken version (it names every face Howard) is stopped there,
with the report, and the production fleet keeps serving the version it had; `dvc repro` with a changed param
registers a new champion and releases it, through staging, to the running production fleet on moto, same URL;
`bbt release rollback` puts the version before back. The fleet is moto's (tests/integration/fleet_stand_in.py).
The flow's release tasks are tested in tests/integration/test_flow.py."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from bbt.config import ServeParams
from bbt.deploy.fleet import find_fleets, fleet_instances
from bbt.release.steps import PRODUCTION_ALIAS, REPORT, STAGING_TAG
from tests.conftest import CHAMPIONS_SEARCH, Project, clone_trained_project
from tests.integration.fleet_stand_in import MotoFleetWorld, moto_fleet_world

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

# Its release, broken release, retrain and rollback take two minutes: apart from the trained-project group.
pytestmark = [pytest.mark.integration, pytest.mark.own_worker]

NAME = "bbt-actor-classifier"


@pytest.fixture(scope="module")
def project(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Releases move aliases and register versions: in a copy of the trained project with stores of its own.
    Its smoke test takes 6 held-out faces per label (30 photos at most, not 60: the suite has 15 minutes)."""
    project = clone_trained_project(trained_project, tmp_path_factory.mktemp("release") / "project")
    project.set_params({"release": {"faces_per_label": 6}})
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


def fleet_serves(world: MotoFleetWorld, deployment: str) -> tuple[str, set[str | None]]:
    """(the fleet's URL, the bento tags its instances were launched with)."""
    fleet = find_fleets(world.session, deployment)[deployment]
    return fleet.url, {i.bento_tag for i in fleet_instances(world.session, fleet)}


def version_answering(world: MotoFleetWorld, url: str, photo: Path) -> str:
    """The registry version that answers a photo sent to the fleet's URL (through the load balancer's stand-in)."""
    with httpx.Client(proxy=world.env["HTTP_PROXY"], timeout=120) as http:
        answer = http.post(f"{url.rstrip('/')}/classify", files={"image": (photo.name, photo.read_bytes())})
    assert answer.status_code == 200, answer.text
    return answer.json()["model"]["version"]


def test_releases_reach_the_fleet_only_through_the_smoke_test_and_roll_back(project: Project,
                                                                           tmp_path: Path) -> None:
    client = registry(project)
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    released = project.run("bbt", "release", timeout=900)
    assert "Smoke test passed" in released.stdout, released.stdout
    assert str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == champion
    assert client.get_model_version(NAME, champion).tags[STAGING_TAG] == "passed"

    with moto_fleet_world(tmp_path / "aws", ServeParams()) as world:
        # Production: a fleet of 1-2 instances serving the bento the release staged.
        bento = re.search(r"built (\S+), pinned to version", released.stdout).group(1)
        deployed = project.run("bbt", "deploy", "ec2", "--min", "1", "--max", "2", "--ami", world.ami,
                               "--bento", bento, env_extra=world.env, timeout=900)
        deployment = re.search(r"\(deployment (\S+);", deployed.stdout).group(1)
        url, first_bentos = fleet_serves(world, deployment)
        assert first_bentos == {bento}

        names_everyone_howard(project)
        project.run("bbt", "register")  # registered with its card, not promoted: worse than the champion
        broken = max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
        stopped = project.run("bbt", "release", "--version", str(broken), "--deployment", deployment,
                              check=False, env_extra=world.env, timeout=900)
        assert stopped.returncode == 3, stopped.stdout + stopped.stderr
        assert f"version {broken} failed the smoke test in staging" in stopped.stderr
        report = (project.root / REPORT).read_text()
        assert "Smoke test FAILED" in report and "| contract | ok |" in report
        assert "| actors named right | **failed** |" in report
        assert "| strangers not named | **failed** |" in report
        assert str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == champion
        assert client.get_model_version(NAME, str(broken)).tags[STAGING_TAG] == "failed"
        assert fleet_serves(world, deployment) == (url, first_bentos), "production keeps the version it served"

        # A changed param (another CV seed, on the champion's own family: a different model, no worse on the test
        # split) with the release on: `dvc repro` retrains, registers and releases it to the fleet.
        project.set_params({"search": {**CHAMPIONS_SEARCH["search"], "seed": 7},
                            "release": {"enabled": True, "deployment": deployment}})
        project.run("dvc", "repro", env_extra=world.env, timeout=1500)
        new = str(client.get_model_version_by_alias(NAME, "champion").version)
        assert int(new) > broken and str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == new
        assert client.get_model_version(NAME, new).tags["previous_production"] == champion
        new_url, new_bentos = fleet_serves(world, deployment)
        assert new_url == url and len(new_bentos) == 1 and new_bentos != first_bentos
        photo = min((project.root / "data/raw/sheldon").iterdir())
        assert version_answering(world, url, photo) == new
        assert "up to date" in project.run("dvc", "status").stdout, "the release stage is in dvc.lock"

        project.run("bbt", "release", "rollback", "--deployment", deployment, env_extra=world.env, timeout=900)
        assert str(client.get_model_version_by_alias(NAME, PRODUCTION_ALIAS).version) == champion
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
        assert fleet_serves(world, deployment) == (url, first_bentos)
