"""Integration: the Prefect retrain flow on the real dataset, against a real Prefect server and a real Dask cluster."""

from __future__ import annotations

import flows  # noqa: F401  (first: it sets Prefect's offline defaults before Prefect is imported)

# isort: split
import contextlib
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pandas as pd
import psutil
import pytest
import yaml
from distributed import Client, LocalCluster, get_task_stream
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from bbt.config import load_params
from bbt.model.candidates import candidates
from bbt.pipeline.clean import list_images, plan_jobs
from flows.deploy import TIMEZONE, WEEKLY_CRON
from flows.release import SMOKE_KEY
from flows.retrain import REPORT_KEY, STAGES
from tests.conftest import Project, clone_trained_project, copy_project

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

pytestmark = pytest.mark.integration
MODEL = "bbt-actor-classifier"


def keep_a_subset(data: Path, reviewed_per_actor: int = 10, unreviewed_per_actor: int = 2,
                  strangers_per_actor: int = 4) -> None:
    """Trim data/ to a few photos per actor with an accepted face, a few with a stranger's face (the open-set
    rule learns from them) and a few with none, plus their reviews (and the second review of those: a
    correction of a photo that is gone would be stale)."""
    reviews = pd.read_csv(data / "annotations.csv", dtype=str)
    accepted = sorted(set(reviews.loc[reviews.review == "accepted", "image"]))
    second = pd.read_csv(data.parent / "review/corrections.csv", dtype=str)
    strangers = sorted(set(second.loc[second.review == "stranger", "image"]))
    raw = data / "raw"
    reviewed = set(reviews.image)
    keep: set[str] = set()
    for actor in ACTORS:
        keep.update([image for image in accepted if image.startswith(f"{actor}/")][:reviewed_per_actor])
        keep.update([image for image in strangers if image.startswith(f"{actor}/")][:strangers_per_actor])
        others = sorted(f"{actor}/{p.name}" for p in (raw / actor).iterdir() if f"{actor}/{p.name}" not in reviewed)
        keep.update(others[:unreviewed_per_actor])
    for path in raw.rglob("*"):
        if path.is_file() and str(path.relative_to(raw)) not in keep:
            path.unlink()
    reviews[reviews.image.isin(keep)].to_csv(data / "annotations.csv", index=False)
    second[second.image.isin(keep)].to_csv(data.parent / "review/corrections.csv", index=False)


@pytest.fixture(scope="module")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project copy on a real subset of the dataset (10 reviewed photos per actor, its own data.dvc).

    A retrain on the whole dataset takes 5-7 minutes on 2 busy cores; this one about a minute, with the same
    code paths. It has its own MLflow and BentoML stores, so the session's trained project is left alone.
    """
    project = copy_project(tmp_path_factory.mktemp("flow-project"))
    project.run("dvc", "pull", "-q", "data.dvc")
    keep_a_subset(project.root / "data")
    project.run("dvc", "add", "-q", "data")
    return project


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (temporary SQLite database) on a free loopback port, for this module."""
    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Client]:
    """A local Dask cluster of 2 single-threaded worker processes."""
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def run_in_project(project: Project, api_url: str, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """A command in the project copy, talking to the test's Prefect server."""
    result = subprocess.run(list(args), cwd=project.root, capture_output=True, text=True, timeout=timeout, check=False,
                            env={**project.env, "PREFECT_API_URL": api_url, **(env or {})})
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def outcome_of(result: subprocess.CompletedProcess[str]) -> dict:
    """The flow's outcome, the JSON line `bbt prefect run` prints last."""
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def registry_versions(project: Project) -> list[str]:
    client = MlflowClient(project.tracking_uri, project.tracking_uri)
    return sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))


def task_runs_of(flow_run_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def stage_of(task_run_name: str) -> str:
    return task_run_name.rsplit("-", 1)[0]  # Prefect names task runs '<task>-<3 characters>'


@pytest.fixture(scope="module")
def forced_run(small_project: Project, prefect_api: str, dask_cluster: Client) -> tuple[dict, list[dict]]:
    """`bbt prefect run --force` on the Dask cluster: the flow's outcome and the cluster's task records. Tests
    that need a trained champion in the small project ask for this, so none depends on another having run."""
    with get_task_stream(client=dask_cluster) as stream:
        result = run_in_project(small_project, prefect_api, "bbt", "prefect", "run", "--force", "--batch-size", "8",
                                env={"BBT_DASK_ADDRESS": dask_cluster.scheduler.address})
    return outcome_of(result), list(stream.data)


def test_forced_run_on_dask_trains_registers_and_reports(small_project: Project,
                                                         forced_run: tuple[dict, list[dict]]) -> None:
    outcome, task_stream = forced_run
    assert outcome["status"] == "retrained"

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(outcome["flow_run_id"]))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        logs = "\n".join(entry.message for entry in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))))
    assert flow_run.state.is_completed()
    params = load_params(small_project.root / "params.yaml")
    n_candidates = len(candidates(params.search, params.featurize.feature_sets))
    for counts in ("faces per actor: {'howard': ", "training faces", f"{n_candidates} candidates; best",
                   "test: actors named right", "now @champion"):
        assert counts in logs, counts
    by_stage: dict[str, list] = {}
    for run in task_runs_of(outcome["flow_run_id"]):
        by_stage.setdefault(stage_of(run.name), []).append(run)
    for stage in STAGES:
        assert [r.state.type.value for r in by_stage[stage]] == ["COMPLETED"], stage
    assert "check-champion" not in by_stage  # force skips the up-to-date check
    raw = small_project.root / "data/raw"
    batches = math.ceil(len(plan_jobs(raw, list_images(raw), [])) / 8)
    detect = by_stage["detect-faces"]
    assert len(detect) == batches and all(r.state.is_completed() for r in detect)
    # The per-image work ran on the cluster, spread over both workers.
    assert len(task_stream) >= batches
    assert len({record["worker"] for record in task_stream}) == 2

    (report,) = [a for a in artifacts if a.key == REPORT_KEY]
    assert f"version {outcome['version']} **became the champion**" in report.data
    assert f"## Leaderboard (top 5 of {n_candidates} by CV open_set_f05)" in report.data
    assert "| howard |" in report.data and "strangers given an actor's name" in report.data
    assert "## Label audit" in report.data and "not yet" in report.data and "rejected boxes await" in report.data

    client = MlflowClient(small_project.tracking_uri, small_project.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert outcome["champion"] is True and str(champion.version) == str(outcome["version"])
    assert champion.tags["data_hash"] == yaml.safe_load((small_project.root / "data.dvc").read_text())["outs"][0]["md5"]
    clean = json.loads((small_project.root / "reports/clean.json").read_text())
    assert min(clean["faces_per_label"].values()) >= 5
    assert sum(clean["faces_per_label"].values()) == clean["total"]["accepted"]
    status = small_project.run("dvc", "status").stdout
    assert "Data and pipelines are up to date" in status, status


def test_second_run_is_up_to_date_without_a_new_version(small_project: Project, prefect_api: str,
                                                         forced_run: tuple[dict, list[dict]]) -> None:
    versions_before = registry_versions(small_project)
    started = time.monotonic()
    outcome = outcome_of(run_in_project(small_project, prefect_api, "bbt", "prefect", "run"))
    elapsed = time.monotonic() - started
    assert outcome["status"] == "up to date"
    assert registry_versions(small_project) == versions_before
    stages = {stage_of(r.name) for r in task_runs_of(outcome["flow_run_id"])}
    assert stages == {"check-champion"}, f"nothing but the check should run ({elapsed:.0f} s)"


def test_a_run_with_the_release_on_releases_the_champion_as_tasks(small_project: Project, prefect_api: str,
                                                                 forced_run: tuple[dict, list[dict]],
                                                                 tmp_path: Path) -> None:
    """release.enabled (staging only): the up-to-date champion, not yet @production, goes through the release's
    tasks, with the smoke test's report as an artifact of the run. In a copy of the small project, whose model is
    not what this checks: its smoke test's gates are opened to one actor named right and most strangers named."""
    project = clone_trained_project(small_project, tmp_path / "project")
    project.set_params({"release": {"enabled": True, "faces_per_label": 3, "min_actor_recall": 0.01,
                                    "max_false_accept": 0.99}})
    champion = str(MlflowClient(project.tracking_uri, project.tracking_uri)
                   .get_model_version_by_alias(MODEL, "champion").version)
    outcome = outcome_of(run_in_project(project, prefect_api, "bbt", "prefect", "run"))
    assert outcome["status"] == "up to date" and outcome["released"] == champion, outcome
    tasks = {stage_of(run.name): run.state.type.value for run in task_runs_of(outcome["flow_run_id"])}
    assert tasks == {"check-champion": "COMPLETED", "release-prepare": "COMPLETED", "release-staging": "COMPLETED",
                     "release-promote": "COMPLETED", "release-record": "COMPLETED"}, "no deployment, no roll-out"
    with get_client(sync_client=True) as client:
        [smoke] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[SMOKE_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[
                UUID(outcome["flow_run_id"])])))
    assert "Smoke test passed" in smoke.data and f"model version {champion} " in smoke.data, smoke.data
    registry = MlflowClient(project.tracking_uri, project.tracking_uri)
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == champion
    assert json.loads((project.root / "reports/release.json").read_text())["enabled"] is True
    assert "Data and pipelines are up to date" in project.run("dvc", "status").stdout, "release.json is in dvc.lock"


def test_a_family_override_is_not_up_to_date(small_project: Project, prefect_api: str,
                                              forced_run: tuple[dict, list[dict]]) -> None:
    """Parameters from the UI change the params hash of the trained champion; the check says so before any work
    starts."""
    code = ("from flows.retrain import effective_params, up_to_date_champion; from prefect import flow;"
            "print('champion:', flow(name='check')(lambda: up_to_date_champion(effective_params(['svm'], None)))())")
    result = run_in_project(small_project, prefect_api, "python", "-c", code)
    assert "champion: None" in result.stdout
    assert "differs in params_hash" in result.stderr + result.stdout


def test_pull_retries_after_a_storage_failure(small_project: Project, prefect_api: str) -> None:
    """The first attempt fails (injected), the retry really pulls: a deleted photo is back afterwards."""
    photo = next((small_project.root / "data/raw/raj").iterdir())
    photo.unlink()
    code = ("from flows.retrain import pull_data; from prefect import flow; from prefect.runtime import flow_run;"
            "print(flow(name='pull-only')(lambda: (pull_data(), str(flow_run.id))[1])())")
    result = run_in_project(small_project, prefect_api, "python", "-c", code,
                            env={"BBT_INJECT_FAULTS": "pull-data=1"})
    flow_run_id = result.stdout.strip().splitlines()[-1]
    (pull,) = task_runs_of(flow_run_id)
    assert stage_of(pull.name) == "pull-data"
    assert pull.state.is_completed() and pull.run_count == 2
    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(pull.id)
    assert [s.type.value for s in states].count("RUNNING") == 2
    assert "AwaitingRetry" in [s.name for s in states] and states[-1].is_completed()
    assert "injected fault on attempt 1" in result.stderr + result.stdout
    assert photo.is_file()


def test_deploy_creates_the_weekly_cron_schedule(small_project: Project, prefect_api: str) -> None:
    run_in_project(small_project, prefect_api, "bbt", "prefect", "deploy", timeout=300)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/weekly")
    (schedule,) = deployment.schedules
    assert schedule.active and schedule.schedule.cron == WEEKLY_CRON
    assert schedule.schedule.timezone == TIMEZONE


def poll(request: Callable[[], httpx.Response], accept: Callable[[httpx.Response], bool], what: str,
         server: subprocess.Popen, timeout: float = 240) -> httpx.Response:
    """Repeat a request until its answer is accepted; fail with `what` on timeout or when the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            answer = request()
            if accept(answer):
                return answer
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what} (server exit code {server.poll()})")


def test_serve_command_runs_the_server_ui_and_the_schedule(small_project: Project, tmp_path: Path,
                                                           forced_run: tuple[dict, list[dict]]) -> None:
    """`bbt prefect serve`: a Prefect server with its UI on loopback, and the deployment served from it. It runs on
    the port prefect.toml names, so Prefect's own hint, `prefect deployment run 'retrain/weekly'`, works from a
    shell in the project with no PREFECT_API_URL set."""
    import tomllib

    configured = tomllib.loads((small_project.root / "prefect.toml").read_text())["api"]["url"]
    port = int(configured.rsplit(":", 1)[1].split("/")[0])
    # The scheduler service looks for due schedules every 60 s by default; a test need not wait that long.
    env = {**small_project.env, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(["bbt", "prefect", "serve", "--port", str(port)], cwd=small_project.root, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deployment = poll(lambda: httpx.get(f"{api}/deployments/name/retrain/weekly", timeout=5),
                          lambda r: r.status_code == 200, "the served deployment never appeared", server).json()
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [WEEKLY_CRON]
        poll(lambda: httpx.post(f"{api}/flow_runs/filter", timeout=10,
                                json={"deployments": {"id": {"any_": [deployment["id"]]}}}),
             lambda r: any(run["state"]["type"] == "SCHEDULED" for run in r.json()),
             "the schedule made no upcoming run", server, timeout=120)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        # prefect.toml points Prefect at this server: nothing asks the user to set PREFECT_API_URL.
        assert "PREFECT_API_URL" not in (tmp_path / "serve.log").read_text()
        # A run started the way Prefect's banner says, from the project's shell, is picked up and completes.
        shell = {k: v for k, v in small_project.env.items() if k != "PREFECT_API_URL"}
        hint = subprocess.run(["prefect", "deployment", "run", "retrain/weekly"], cwd=small_project.root, env=shell,
                              capture_output=True, text=True, timeout=120, check=False)
        assert hint.returncode == 0, hint.stdout + hint.stderr
        import re

        found = re.search(r"UUID: ([0-9a-f-]{36})", hint.stdout)
        assert found, hint.stdout
        started = {"id": found.group(1)}
        poll(lambda: httpx.get(f"{api}/flow_runs/{started['id']}", timeout=10),
             lambda r: r.json()["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED"},
             "the deployment run never finished", server, timeout=180)
        finished = httpx.get(f"{api}/flow_runs/{started['id']}", timeout=10).json()
        assert finished["state"]["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        # Stopped the way systemd, Docker and CI stop a command: SIGTERM to it alone, which must stop the Prefect
        # server and the deployment runner it started, as Ctrl-C does.
        started_processes = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    finally:
        if server.poll() is None:  # a failed test leaves nothing running either
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
    left = [p for p in started_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert left == [], f"left running after SIGTERM: {[p.cmdline() for p in left]}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/health", timeout=2)
