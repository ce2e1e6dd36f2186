"""The release as Prefect tasks (the steps of bbt/release.py): prepare, staging smoke test, production roll-out,
promote. The smoke test's report is a markdown artifact of the flow run, passed or not."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bbt.config import Params
from bbt.release import Candidate, ReleaseStopped, prepare, produce, promote, stage

SMOKE_KEY = "release-smoke-test"


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="release-prepare", timeout_seconds=900, cache_policy=NO_CACHE)
def release_prepare(params: Params, version: str) -> Candidate:
    return prepare(Path("."), params, version, _log)


@task(name="release-staging", timeout_seconds=900, cache_policy=NO_CACHE)
def release_staging(params: Params, candidate: Candidate, workdir: str) -> str:
    try:
        report = stage(Path("."), params, candidate, Path(workdir), _log)
    except ReleaseStopped as stopped:
        if stopped.report is not None:
            create_markdown_artifact(key=SMOKE_KEY, markdown=stopped.report.as_markdown(),
                                     description=f"staging smoke test of version {candidate.version}: failed")
        raise
    create_markdown_artifact(key=SMOKE_KEY, markdown=report.as_markdown(),
                             description=f"staging smoke test of version {candidate.version}: passed")
    return report.as_markdown()


@task(name="release-production", timeout_seconds=3600, cache_policy=NO_CACHE)
def release_production(params: Params, candidate: Candidate, workdir: str) -> None:
    from bbt.deploy.fleet_release import roll_out_with

    produce(Path("."), params, candidate, params.release.deployment, roll_out_with(None, None), Path(workdir), _log)


@task(name="release-promote", timeout_seconds=120, cache_policy=NO_CACHE)
def release_promote(candidate: Candidate) -> None:
    promote(candidate, _log)


def release_champion(params: Params, version: str) -> dict[str, Any]:
    """Every release step as a task, in order; a failed check fails its task (and the flow) with the reason."""
    candidate = release_prepare(params, version)
    with tempfile.TemporaryDirectory(prefix="bbt-release-") as workdir:
        release_staging(params, candidate, workdir)
        if params.release.deployment:
            release_production(params, candidate, workdir)
    release_promote(candidate)
    return {"released": candidate.version, "deployment": params.release.deployment or None}
