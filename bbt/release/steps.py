"""A release: a registry version (by default the one @champion names) reaches users only through checks.

1. The version must have a model card (bbt/registry/model_cards.py).
2. It is imported into the BentoML store and built into a bento pinned to it.
3. The bento runs in staging (the nginx staging copy of production) and must pass the smoke test (bbt/release/smoke.py).
4. With a production deployment, it is rolled out in place (bbt/deploy/fleet.py); the roll-out checks the new
   instances the same way and leaves the old version serving if they fail.
5. The registry records it: alias `@production` names the version serving, and the version's tag
   `previous_production` the one before, which `bbt release rollback` puts back.

A failed check raises ReleaseStopped with the smoke report; production is left as it was.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bbt import artifacts
from bbt.config import Params
from bbt.errors import BbtError, ModelError
from bbt.release.smoke import SmokeReport, held_out_faces, smoke_test

log = logging.getLogger(__name__)
PRODUCTION_ALIAS = "production"
PREVIOUS_TAG = "previous_production"
RELEASED_TAG = "released_at"
STAGING_TAG = "staging_smoke_test"
REPORT = Path("reports") / "release_smoke_test.md"


class ReleaseStopped(BbtError):
    """A check failed: the version did not reach production (the message says which check, and why)."""

    def __init__(self, message: str, report: SmokeReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ReleaseResult:
    version: str
    previous: str | None  # the version @production named before, if any
    bento_tag: str
    staging: SmokeReport
    production: str | None  # the deployment rolled out to, if any


# (deployment id, bento archive, bento tag, model version, probe of a URL) -> None; raises on a failed roll-out.
RollOut = Callable[[str, Path, str, str, Callable[[str], SmokeReport]], None]


def _client():
    from mlflow import MlflowClient

    from bbt.registry.tracking import setup_tracking

    setup_tracking()
    return MlflowClient()


def version_of(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Candidate:
    """A version ready for staging: its card checked, its pinned bento built."""

    name: str
    version: str
    previous: str | None  # the version @production named before, if any
    bento_tag: str


def prepare(root: Path, params: Params, version: str | None = None,
            echo: Callable[[str], None] = log.info) -> Candidate:
    """Step 1: the version (default @champion) must have a model card; build the bento pinned to it."""
    from bbt.deploy.bento import build_bento
    from bbt.registry.bento_store import import_version
    from bbt.registry.model_cards import require_card

    client = _client()
    name = params.register.model_name
    version = version or version_of(client, name, params.register.alias)
    if version is None:
        raise ModelError(f"models:/{name}@{params.register.alias} does not exist: run `dvc repro` (or `bbt register`)")
    require_card(client, name, version)
    previous = version_of(client, name, PRODUCTION_ALIAS)
    echo(f"release {name} version {version} (production serves {previous or 'nothing yet'})")
    import_version(name, version)
    bento = build_bento(root)
    echo(f"built {bento}, pinned to version {version}")
    return Candidate(name, version, previous, bento)


def checker(root: Path, params: Params, version: str) -> Callable[[str], SmokeReport]:
    """The smoke test of `version` at a URL, on the held-out faces of this project's test split."""
    faces = held_out_faces(root, params.release.faces_per_label)
    raw = root / params.data.raw
    return lambda url: smoke_test(url, raw, faces, params.release, expect_version=version)


def stage(root: Path, params: Params, candidate: Candidate, workdir: Path,
          echo: Callable[[str], None] = log.info) -> SmokeReport:
    """Step 2: serve the bento in staging (nginx in front, as in production) and smoke-test it there.
    ReleaseStopped (with the report) when a check fails."""
    from bbt.deploy.staging import run_staging

    check = checker(root, params, candidate.version)
    with run_staging(root, workdir / "staging", bento_tag=candidate.bento_tag, serve=params.serve) as staging:
        echo(f"staging at {staging.url}: smoke test")
        report = check(staging.url)
    write_report(root, report)
    _client().set_model_version_tag(candidate.name, candidate.version, STAGING_TAG,
                                    "passed" if report.passed else "failed")
    if not report.passed:
        raise ReleaseStopped(f"version {candidate.version} failed the smoke test in staging ("
                             + "; ".join(f"{c.name}: {c.detail}" for c in report.failures())
                             + f"); production keeps {candidate.previous or 'what it serves'}. Report: {REPORT}",
                             report)
    echo("staging smoke test passed")
    return report


def produce(root: Path, params: Params, candidate: Candidate, deployment: str, roll_out: RollOut, workdir: Path,
            echo: Callable[[str], None] = log.info) -> None:
    """Step 3: roll the bento out to the production deployment, which checks the new instances the same way and
    keeps the old version serving if they fail (then this raises)."""
    from bbt.deploy.bento import export_bento

    archive = export_bento(candidate.bento_tag, workdir / "export" / "bento.bento")
    echo(f"rolling {candidate.bento_tag} out to {deployment}")
    roll_out(deployment, archive, candidate.bento_tag, candidate.version, checker(root, params, candidate.version))


def promote(candidate: Candidate, echo: Callable[[str], None] = log.info) -> None:
    """Step 4: the version is @production; the version it replaced is remembered for a rollback."""
    record(_client(), candidate.name, candidate.version, candidate.previous)
    echo(f"version {candidate.version} is @{PRODUCTION_ALIAS}")


def release(root: Path, params: Params, version: str | None = None, deployment: str | None = None,
            roll_out: RollOut | None = None, echo: Callable[[str], None] = log.info) -> ReleaseResult:
    """Every step in order (the Prefect flow runs the same steps as tasks). ReleaseStopped when a check fails,
    with production as it was."""
    if deployment and roll_out is None:
        raise ModelError(f"no way to roll out to {deployment} was given")
    candidate = prepare(root, params, version, echo)
    with tempfile.TemporaryDirectory(prefix="bbt-release-") as scratch:
        report = stage(root, params, candidate, Path(scratch), echo)
        if deployment and roll_out is not None:
            produce(root, params, candidate, deployment, roll_out, Path(scratch), echo)
    promote(candidate, echo)
    return ReleaseResult(candidate.version, candidate.previous, candidate.bento_tag, report, deployment)


def pending(params: Params) -> str | None:
    """The version a pipeline run releases: @champion, when release.enabled and it is not @production yet (a
    new champion, or one whose release was stopped before and is tried again)."""
    if not params.release.enabled:
        return None
    client = _client()
    champion = version_of(client, params.register.model_name, params.register.alias)
    if champion is None or champion == version_of(client, params.register.model_name, PRODUCTION_ALIAS):
        return None
    return champion


def run_release_stage(root: Path, params: Params, roll_out: RollOut | None = None,
                      echo: Callable[[str], None] = log.info) -> dict:
    """dvc.yaml's release stage: release the pending version (`pending`), if any, to release.deployment; then
    write reports/release.json, the release policy the pipeline's model went through (only what follows from
    the inputs: version numbers belong to one MLflow store). ReleaseStopped when a check fails, so the stage
    fails and the next `dvc repro` tries again."""
    model_md5 = registered_md5(root)
    if params.release.enabled:
        version = pending(params)
        if version is None:
            echo(f"release: @{params.register.alias} is already @{PRODUCTION_ALIAS}, nothing to release")
        else:
            release(root, params, version, params.release.deployment or None, roll_out, echo)
    else:
        echo("release: off (params.yaml release.enabled: false); `bbt release` releases by hand")
    return write_release_report(root, params, model_md5)


def registered_md5(root: Path) -> str:
    """The md5 of the model the pipeline's register stage registered (reports/register.json)."""
    return json.loads((root / artifacts.REGISTER_REPORT).read_text())["model_md5"]


def write_release_report(root: Path, params: Params, model_md5: str) -> dict:
    """reports/release.json: whether this model went through a release, to where, past which gates."""
    gates = params.release
    policy = {"model_md5": model_md5, "enabled": gates.enabled, "deployment": gates.deployment,
              "gates": {"faces_per_label": gates.faces_per_label, "min_actor_recall": gates.min_actor_recall,
                        "max_false_accept": gates.max_false_accept, "latency_budget_ms": gates.latency_budget_ms}}
    artifacts.write_json(root / artifacts.RELEASE_REPORT, policy)
    return policy


def record(client, name: str, version: str, previous: str | None) -> None:
    """Move @production to `version`, remembering the version it replaced (for `bbt release rollback`)."""
    if previous and previous != version:
        client.set_model_version_tag(name, version, PREVIOUS_TAG, previous)
    client.set_model_version_tag(name, version, RELEASED_TAG, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)


def write_report(root: Path, report: SmokeReport) -> Path:
    path = root / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.as_markdown(), encoding="utf-8")
    return path


def rollback(root: Path, params: Params, deployment: str | None = None,
             roll_back: Callable[[str, str], None] | None = None,
             echo: Callable[[str], None] = log.info) -> tuple[str, str]:
    """Put the version before @production back: on `deployment` (its previous launch template version), then
    @production and @champion move to it. Returns (the version taken off, the version restored)."""
    client = _client()
    name = params.register.model_name
    current = version_of(client, name, PRODUCTION_ALIAS)
    if current is None:
        raise ModelError(f"models:/{name}@{PRODUCTION_ALIAS} does not exist: nothing was released, nothing to roll "
                         "back")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS_TAG)
    if not previous:
        raise ModelError(f"{name} version {current} is @{PRODUCTION_ALIAS} but records no version before it: "
                         "release a version explicitly with `bbt release VERSION`")
    if deployment:
        if roll_back is None:
            raise ModelError(f"no way to roll {deployment} back was given")
        roll_back(deployment, previous)
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, previous)
    # The champion follows: otherwise the next release (or the weekly flow) would ship the bad version again.
    client.set_registered_model_alias(name, params.register.alias, previous)
    client.set_model_version_tag(name, current, "rolled_back_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    echo(f"rolled back: version {previous} is @{PRODUCTION_ALIAS} and @{params.register.alias} again "
         f"(version {current} was)")
    return current, previous
