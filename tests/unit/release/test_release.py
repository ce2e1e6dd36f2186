"""The release's registry bookkeeping on a temporary MLflow store: @production, the version it replaced, and the
rollback that puts that version back (with @champion), refusing clearly when there is nothing to go back to."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from bbt.config import Params
from bbt.errors import ModelError
from bbt.registry.tracking import setup_tracking
from bbt.release.steps import (
    PREVIOUS_TAG,
    PRODUCTION_ALIAS,
    pending,
    record,
    rollback,
    run_release_stage,
    version_of,
)

NAME = Params().register.model_name


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made once (the migrations take seconds); tests copy it."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def client(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """A registry of this test's own, as bbt.release.steps reaches it (MLFLOW_TRACKING_URI)."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_store, tmp_path / "mlruns/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    setup_tracking()
    MlflowClient().create_registered_model(NAME)
    yield MlflowClient()
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def register(client: MlflowClient, folder: str) -> str:
    """A new version (the registry bookkeeping needs no model files)."""
    return str(client.create_model_version(NAME, source=f"file:///models/{folder}").version)


def test_releases_remember_the_version_before_and_rollback_restores_it(client: MlflowClient) -> None:
    first, second = register(client, "a"), register(client, "b")
    record(client, NAME, first, None)
    client.set_registered_model_alias(NAME, "champion", second)
    record(client, NAME, second, first)
    assert version_of(client, NAME, PRODUCTION_ALIAS) == second
    assert client.get_model_version(NAME, second).tags[PREVIOUS_TAG] == first

    said: list[str] = []
    taken_off, restored = rollback(Path("."), Params(), echo=said.append)
    assert (taken_off, restored) == (second, first)
    assert version_of(client, NAME, PRODUCTION_ALIAS) == first
    assert version_of(client, NAME, "champion") == first, "the next release must not ship the bad version again"
    assert "rolled_back_at" in client.get_model_version(NAME, second).tags
    assert f"version {first} is @production" in said[0]
    with pytest.raises(ModelError, match="records no version before it"):
        rollback(Path("."), Params())


def test_rollback_without_a_release_says_so(client: MlflowClient) -> None:
    register(client, "a")
    with pytest.raises(ModelError, match="nothing was released"):
        rollback(Path("."), Params())


def test_rollback_of_a_deployment_calls_its_roll_back_first(client: MlflowClient) -> None:
    first, second = register(client, "a"), register(client, "b")
    record(client, NAME, first, None)
    record(client, NAME, second, first)
    calls: list[tuple[str, str]] = []
    rollback(Path("."), Params(), "bbt-20260101-000000-abcd", roll_back=lambda d, v: calls.append((d, v)))
    assert calls == [("bbt-20260101-000000-abcd", first)]
    record(client, NAME, second, first)

    def failing(deployment: str, version: str) -> None:
        raise ModelError("the instance refresh failed")
    with pytest.raises(ModelError, match="refresh failed"):
        rollback(Path("."), Params(), "bbt-20260101-000000-abcd", roll_back=failing)
    assert version_of(client, NAME, PRODUCTION_ALIAS) == second, "a failed roll-back moves no alias"


def enabled(deployment: str = "") -> Params:
    params = Params()
    return replace(params, release=replace(params.release, enabled=True, deployment=deployment))


def test_the_pipeline_releases_the_champion_only_when_enabled_and_not_yet_in_production(client: MlflowClient) -> None:
    first, second = register(client, "a"), register(client, "b")
    assert pending(enabled()) is None, "no champion, nothing to release"
    client.set_registered_model_alias(NAME, "champion", first)
    assert pending(Params()) is None, "release.enabled is false by default"
    assert pending(enabled()) == first
    record(client, NAME, first, None)
    assert pending(enabled()) is None, "the champion is already @production"
    client.set_registered_model_alias(NAME, "champion", second)
    assert pending(enabled()) == second, "a new champion, or one whose release was stopped before"


def test_the_release_stage_off_releases_nothing_and_writes_its_policy(client: MlflowClient, tmp_path: Path) -> None:
    client.set_registered_model_alias(NAME, "champion", register(client, "a"))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/register.json").write_text(json.dumps({"model_md5": "0" * 32}))
    said: list[str] = []
    policy = run_release_stage(tmp_path, Params(), echo=said.append)
    assert version_of(client, NAME, PRODUCTION_ALIAS) is None
    assert "release.enabled: false" in said[0]
    assert json.loads((tmp_path / "reports/release.json").read_text()) == policy
    assert policy["model_md5"] == "0" * 32 and policy["enabled"] is False
    assert policy["gates"]["min_actor_recall"] == Params().release.min_actor_recall


def test_the_release_stage_with_a_deployment_but_no_way_to_roll_out_refuses(client: MlflowClient,
                                                                              tmp_path: Path) -> None:
    client.set_registered_model_alias(NAME, "champion", register(client, "a"))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/register.json").write_text(json.dumps({"model_md5": "0" * 32}))
    with pytest.raises(ModelError, match="no way to roll out"):
        run_release_stage(tmp_path, enabled("bbt-20260101-000000-abcd"))
    assert not (tmp_path / "reports/release.json").exists(), "a release that did not happen is not recorded"
