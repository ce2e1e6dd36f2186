"""`bbt release`: take the champion through staging to production; `bbt release rollback`: the version before;
`bbt release pipeline`: dvc.yaml's release stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from bbt.cli_support import friendly

release_app = typer.Typer(help="Release a registry version: model card, bento, staging smoke test, roll-out; or roll "
                               "it back.", invoke_without_command=True)

DEPLOYMENT = typer.Option(None, help="The production deployment to roll out to (`bbt deploy status` lists them; "
                                     "default: staging only).")
REGION = typer.Option(None, help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config).")
PROFILE = typer.Option(None, help="AWS profile from ~/.aws/config (default: AWS_PROFILE or the default one).")


@release_app.callback()
@friendly
def release(
    ctx: typer.Context,
    version: str = typer.Option(None, help="The registry version to release (default: the @champion one)."),
    deployment: str = DEPLOYMENT,
    region: str = REGION,
    profile: str = PROFILE,
) -> None:
    """Release VERSION (default @champion): it must have a model card and pass the smoke test in staging, and
    on --deployment in production too; then it is @production. A failed check stops it, production unchanged."""
    if ctx.invoked_subcommand is not None:
        return
    from bbt.config import load_params
    from bbt.release.steps import release as run_release

    with stopped_exits():
        result = run_release(Path("."), load_params(), version, deployment,
                             roll_out=fleet_roll_out(region, profile) if deployment else None, echo=typer.echo)
    typer.echo(result.staging.as_markdown())


@release_app.command()
@friendly
def pipeline(region: str = REGION, profile: str = PROFILE) -> None:
    """dvc.yaml's release stage: with release.enabled in params.yaml, release @champion (when it is not
    @production yet) to release.deployment; writes reports/release.json. Off, it only writes the file."""
    from bbt.config import load_params
    from bbt.release.steps import run_release_stage

    params = load_params()
    with stopped_exits():
        run_release_stage(Path("."), params, fleet_roll_out(region, profile) if params.release.deployment else None,
                          echo=typer.echo)


@contextmanager
def stopped_exits() -> Iterator[None]:
    """A stopped release prints its smoke report and exits 3 (a check failed, not the tool)."""
    from bbt.release.steps import ReleaseStopped

    try:
        yield
    except ReleaseStopped as err:
        if err.report is not None:
            typer.echo(err.report.as_markdown())
        typer.secho(f"release stopped: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from None


@release_app.command()
@friendly
def rollback(deployment: str = DEPLOYMENT, region: str = REGION, profile: str = PROFILE) -> None:
    """Put the version released before the current @production back (on --deployment too)."""
    from bbt.config import load_params
    from bbt.release.steps import rollback as run_rollback

    run_rollback(Path("."), load_params(), deployment,
                 roll_back=fleet_roll_back(region, profile) if deployment else None, echo=typer.echo)


def fleet_roll_out(region: str | None, profile: str | None):
    """The production roll-out of bbt/deploy/fleet.py, in the given AWS account and region."""
    from bbt.release.fleet import roll_out_with

    return roll_out_with(region, profile)


def fleet_roll_back(region: str | None, profile: str | None):
    from bbt.release.fleet import roll_back_with

    return roll_back_with(region, profile)
