"""dvc.yaml's release stage as Prefect tasks (the steps of bbt/release/steps.py): prepare, staging smoke test, production
roll-out, promote, then reports/release.json. The smoke test's report is a markdown artifact of the flow run,
passed or not."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bbt.config import Params
from bbt.errors import BbtError
from bbt.release.steps import (
    Candidate,
    ReleaseStopped,
    pending,
    prepare,
    produce,
    promote,
    registered_md5,
    stage,
    write_release_report,
)

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
    from bbt.release.fleet import roll_out_with

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
    return {"released": candidate.version, "bento": candidate.bento_tag, "deployment": params.release.deployment or None}


@task(name="release-record", timeout_seconds=120, cache_policy=NO_CACHE)
def release_record(params: Params, commit: bool) -> None:
    """reports/release.json as dvc.yaml's release stage writes it; in dvc.lock when the run used params.yaml's
    own values (`commit`), so that `dvc repro` does not release the same model again."""
    write_release_report(Path("."), params, registered_md5(Path(".")))
    if commit:
        committed = subprocess.run(["dvc", "commit", "-f", "-q", "release"], capture_output=True, text=True,
                                   check=False)
        if committed.returncode != 0:
            raise BbtError(f"dvc commit release failed:\n{committed.stderr.strip()}")


def release_stage(params: Params, commit: bool) -> dict[str, Any]:
    """The release stage: the pending version (bbt.release.steps.pending: @champion when release.enabled and it is not
    @production yet) through every step, then its record."""
    version = pending(params)
    released = release_champion(params, version) if version else {"released": None}
    release_record(params, commit)
    return released
