"""Flow `retrain`: the dvc.yaml stages as Prefect tasks, skipped when the champion is already up to date.

Each task calls the same `bbt` stage function as `dvc.yaml`, on the same paths; the last task runs
`dvc commit` so dvc.lock records what the flow made and `dvc status` / `dvc repro` agree with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run, task_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from bbt import artifacts
from bbt.config import ConfigError, Params, load_params
from bbt.config import validate as validate_params
from bbt.errors import BbtError
from bbt.pipeline.audit import run_audit
from bbt.pipeline.clean import BatchWork, ImageJob, cast_of, run_clean
from bbt.pipeline.detection_cache import Detected
from bbt.pipeline.evaluate import run_evaluate
from bbt.pipeline.featurize import run_featurize
from bbt.pipeline.progress import progress
from bbt.pipeline.register import run_register, training_params_hash
from bbt.pipeline.search import run_search
from bbt.registry.tracking import corrections_hash, data_hash, setup_tracking
from bbt.serving.ready import probe
from flows.release import release_stage

# `tcp://host:8786` runs the per-image work on that Dask cluster; `local` starts a 2-worker one for the run.
DASK_ADDRESS_ENV = "BBT_DASK_ADDRESS"
# Test hook: `pull-data=1,register=1` makes those tasks fail their first N attempts, to exercise the retries.
FAULTS_ENV = "BBT_INJECT_FAULTS"
STAGES = ("pull-data", "clean", "featurize", "audit", "search", "evaluate", "register", "dvc-commit", "release-record")
REPORT_KEY = "retrain-report"


class StorageError(BbtError):
    """The DVC remote or the MLflow store did not answer; the task retries."""


def inject_fault(stage: str) -> None:
    """Fail this attempt when BBT_INJECT_FAULTS asks for more failures of `stage` than have happened."""
    wanted = dict(item.split("=") for item in os.environ.get(FAULTS_ENV, "").split(",") if "=" in item)
    if task_run.get_run_count() <= int(wanted.get(stage, 0)):
        raise StorageError(f"{stage}: injected fault on attempt {task_run.get_run_count()} ({FAULTS_ENV})")


def effective_params(families: list[str] | None, feature_sets: list[str] | None) -> Params:
    """params.yaml with the run's overrides from the UI applied, checked by the same rules as params.yaml."""
    params = load_params()
    if families:
        params = replace(params, search=replace(params.search, families=tuple(families)))
    if feature_sets:
        params = replace(params, featurize=replace(params.featurize, feature_sets=tuple(feature_sets)))
    if families or feature_sets:
        validate_params(params, "the run's --family/--feature-set")
    return params


@task(name="check-champion", timeout_seconds=120, cache_policy=NO_CACHE)
def up_to_date_champion(params: Params) -> str | None:
    """The champion's version when it was trained on today's data hash and params; None otherwise."""
    logger = get_run_logger()
    setup_tracking()
    try:
        champion = MlflowClient().get_model_version_by_alias(params.register.model_name, params.register.alias)
    except MlflowException:
        logger.info("no %s@%s yet: training", params.register.model_name, params.register.alias)
        return None
    today = {"data_hash": data_hash(), "corrections_hash": corrections_hash(params.data.corrections),
             "params_hash": training_params_hash(params)}
    changed = [key for key, value in today.items() if champion.tags.get(key) != value]
    if changed:
        logger.info("champion version %s differs in %s: training", champion.version, ", ".join(changed))
        return None
    logger.info("champion version %s was trained on data %s with these params", champion.version,
                today["data_hash"])
    return str(champion.version)


@task(name="pull-data", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      timeout_seconds=1800, cache_policy=NO_CACHE)
def pull_data() -> str:
    """`dvc pull data.dvc`: the dataset only (the stage products are rebuilt, not pulled)."""
    inject_fault("pull-data")
    pulled = subprocess.run(["dvc", "pull", "data.dvc"], capture_output=True, text=True, check=False)
    if pulled.returncode != 0:
        raise StorageError(f"dvc pull data.dvc failed (remote: `dvc remote list`):\n{pulled.stderr.strip()}")
    get_run_logger().info("data %s: %s", data_hash(), pulled.stdout.strip().splitlines()[-1:])
    return data_hash()


# No timeout here: on Dask it runs in a worker thread, where Prefect cannot interrupt it (clean has one).
@task(name="detect-faces", cache_policy=NO_CACHE)
def detect_faces(batch: list[ImageJob], work: BatchWork) -> list[Detected]:
    """The per-photo work (decode, detect, crop) of one batch, wherever the task runner puts it."""
    results = work(batch)
    get_run_logger().info("%d images, %d faces", len(batch), sum(len(r.boxes) for r in results))
    return results


def map_over_task_runner(batches: list[list[ImageJob]], work: BatchWork) -> list[list[Detected]]:
    """bbt.pipeline.clean's BatchMapper: one detect-faces task per batch, on the flow's task runner."""
    futures = detect_faces.map(batches, work=unmapped(work))
    with progress("clean: detecting faces, batches", total=len(futures)) as advance:
        for _ in as_completed(futures):
            advance()
    return futures.result()


@task(name="clean", timeout_seconds=3600, cache_policy=NO_CACHE)
def clean(params: Params, batch_size: int) -> dict:
    report = run_clean(params.data, params.clean, cast_of(params), map_batches=map_over_task_runner, batch_size=batch_size)
    logger = get_run_logger()
    logger.info("faces per actor: %s", report["faces_per_label"])
    logger.info("totals: %s", report["total"])
    return report


@task(name="featurize", timeout_seconds=1800, cache_policy=NO_CACHE)
def featurize(params: Params) -> dict[str, int]:
    counts = run_featurize(params.split, params.featurize)
    get_run_logger().info("%d training faces, %d test faces; feature sets %s", counts["train"], counts["test"],
                          list(params.featurize.feature_sets))
    return counts


@task(name="audit", timeout_seconds=600, cache_policy=NO_CACHE)
def audit(params: Params) -> dict:
    metrics = run_audit(params.audit, params.featurize, params.data, params.search)
    get_run_logger().info("label audit: %d of %d faces suspect, %d not yet reviewed a second time (%s)",
                          metrics["suspects"], metrics["faces"], metrics["unreviewed_suspects"], artifacts.AUDIT_PNG)
    return metrics


@task(name="search", timeout_seconds=3600, cache_policy=NO_CACHE)
def search(params: Params) -> dict:
    summary = run_search(params)
    get_run_logger().info("%d candidates; best %s, CV %s %.3f", summary["n_candidates"], summary["best_candidate"],
                          summary["objective"], summary[f"cv_{summary['objective']}"])
    return summary


@task(name="evaluate", timeout_seconds=600, cache_policy=NO_CACHE)
def evaluate() -> dict:
    metrics = run_evaluate()
    get_run_logger().info("test: actors named right %.3f (macro-F1 %.3f) of %d; strangers given a name %.3f of %d",
                          metrics["test_actor_accuracy"], metrics["test_actor_f1"], metrics["n_actor_faces"],
                          metrics["test_false_accept_rate"], metrics["n_stranger_faces"])
    return metrics


@task(name="register", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      timeout_seconds=900, cache_policy=NO_CACHE)
def register(params: Params) -> dict:
    inject_fault("register")
    return run_register(params)  # its log line (bbt is one of Prefect's extra loggers) says what it did


@task(name="dvc-commit", timeout_seconds=600, cache_policy=NO_CACHE)
def dvc_commit(params: Params) -> list[str]:
    """Record the products in dvc.lock; only the stages whose params.yaml values this run used."""
    declared = load_params()
    # Products made with UI overrides are not what params.yaml describes: leave those stages 'changed'.
    if params == declared:
        stages = ["clean", "featurize", "audit", "search", "evaluate", "register"]
    elif params.featurize == declared.featurize:
        stages = ["clean", "featurize", "audit"]
    else:
        stages = ["clean"]
    committed = subprocess.run(["dvc", "commit", "-f", "-q", *stages], capture_output=True, text=True,
                               check=False)
    if committed.returncode != 0:
        raise StorageError(f"dvc commit failed:\n{committed.stderr.strip()}")
    get_run_logger().info("dvc.lock records %s%s", stages,
                          "" if params == declared else "; the later stages used overrides of params.yaml")
    return stages


def report_markdown(search_summary: dict, metrics: dict, registered: dict, audit: dict, corrections: Path,
                    top: int = 5) -> str:
    """The run's leaderboard, test metrics, label audit and registry outcome, as the Prefect artifact shows them."""
    board = pd.read_csv(artifacts.LEADERBOARD).head(top)
    objective = search_summary["objective"]
    rows = "\n".join(f"| {rank} | `{r.candidate}` | {getattr(r, f'cv_{objective}'):.3f} | "
                     f"{r.cv_false_accept_rate:.3f} | {r.threshold:.3f} |"
                     for rank, r in enumerate(board.itertuples(), 1))
    classes = "\n".join(f"| {actor} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1-score']:.3f} | "
                        f"{int(v['support'])} |" for actor, v in metrics["per_class"].items())
    outcome = "**became the champion**" if registered["champion"] else \
        f"registered, **champion stays version {registered['champion_version']}**"
    return f"""# Retrain: version {registered['version']} {outcome}

{registered['reason']}

## Leaderboard (top {top} of {search_summary['n_candidates']} by CV {objective})
| # | candidate | CV {objective} | CV false accepts | threshold |
|---|---|---|---|---|
{rows}

## Test split ({metrics['n_actor_faces']} actor faces, {metrics['n_stranger_faces']} strangers' faces)
Actors named right **{metrics['test_actor_accuracy']:.3f}** (macro-F1 **{metrics['test_actor_f1']:.3f}**);
strangers given an actor's name **{metrics['test_false_accept_rate']:.3f}**.

| answer | precision | recall | F1 | faces |
|---|---|---|---|---|
{classes}

## Label audit
{audit['suspects']} of {audit['faces']} accepted faces look mislabelled, {audit['unreviewed_suspects']} of them not yet
given a second review (`{artifacts.AUDIT_PNG}`, verdicts in `{corrections}`). {audit['rejected_unreviewed']}
rejected boxes await a second review (`{artifacts.REJECTED_PNG}`).
"""


def task_runner(address: str | None = None) -> TaskRunner:
    """Threads on this machine by default; a Dask cluster (`local` for a temporary 2-worker one) when asked."""
    address = address or os.environ.get(DASK_ADDRESS_ENV)
    if not address:
        return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2)
    from prefect_dask import DaskTaskRunner

    if address == "local":
        # The dashboard on a random loopback port: a fixed one collides with other runs on the machine.
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "host": "127.0.0.1",
                                              "dashboard_address": "127.0.0.1:0"})
    return DaskTaskRunner(address=address)


# The runner is chosen when the flow is imported, so a served deployment follows BBT_DASK_ADDRESS too.
@flow(name="retrain", log_prints=True, task_runner=task_runner())
def retrain(force: bool = False, families: list[str] | None = None, feature_sets: list[str] | None = None,
            batch_size: int = 32) -> dict[str, Any]:
    """Pull, clean, featurize, search, evaluate, register - unless the champion already has today's data and
    params (`force` retrains anyway) - then release (with release.enabled, the champion if not yet @production).
    `families`/`feature_sets` override params.yaml for this run."""
    params = effective_params(families, feature_sets)
    champion = None if force else up_to_date_champion(params)
    if champion is not None:
        create_markdown_artifact(
            key=REPORT_KEY, description="retrain outcome",
            markdown=f"# Up to date\n\nChampion version {champion} was trained on data `{data_hash()}` with "
                     "these params: nothing to retrain (run with `force` to retrain anyway).")
        print(f"up to date: champion version {champion}")
        # A champion not yet released (release.enabled turned on since, or its release was stopped) goes now.
        released = release_stage(params, commit=params == load_params()) if params.release.enabled else {}
        return {"status": "up to date", "champion_version": int(champion), **released,
                "flow_run_id": str(flow_run.id)}
    pull_data()
    clean(params, batch_size)
    featurize(params)
    audit_metrics = audit(params)
    search_summary = search(params)
    metrics = evaluate()
    registered = register(params)
    committed = dvc_commit(params)
    create_markdown_artifact(key=REPORT_KEY, description="retrain outcome",
                             markdown=report_markdown(search_summary, metrics, registered, audit_metrics,
                                                      params.data.corrections))
    released = release_stage(params, commit="register" in committed)
    return {"status": "retrained", **registered, **released, "committed_stages": committed,
            "flow_run_id": str(flow_run.id)}


def run_retrain(dask_address: str | None = None, **parameters: Any) -> dict[str, Any]:
    """Run the flow once in this process, on the configured task runner: on the server at PREFECT_API_URL
    (prefect.toml names `make prefect`'s), or on a temporary one when no server answers there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = PREFECT_API_URL.value()
    dask = dask_address or os.environ.get(DASK_ADDRESS_ENV)
    if api_url and probe(f"{api_url}/health", timeout=3) != 200:
        if dask or os.environ.get("PREFECT_API_URL"):
            raise ConfigError(f"no Prefect server answers at {api_url}: start one with `make prefect`")
        print(f"no Prefect server at {api_url} (prefect.toml): running on a temporary one; `make prefect` "
              "starts a server that keeps the runs", file=sys.stderr)
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            return retrain.with_options(task_runner=task_runner(dask_address))(**parameters)
    if dask and not api_url:
        # Without it each Dask worker would start a temporary server of its own and report nowhere.
        raise ConfigError("a Dask run needs a Prefect server its workers can reach: start one with "
                          "`make prefect` and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    return retrain.with_options(task_runner=task_runner(dask_address))(**parameters)
