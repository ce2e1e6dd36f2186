"""`bbt prefect ...`: run the retrain flow once, deploy its weekly schedule, serve it with the Prefect UI.

The `bbt` command loads this app only when `prefect` is named (bbt/cli.py, `WithLazyApps`), so the library
never imports the orchestration package; Prefect itself is imported inside the commands.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from bbt.cli_support import friendly

prefect_app = typer.Typer(name="prefect", no_args_is_help=True,
                          help="The Prefect retrain flow: run it once, deploy its weekly schedule, serve it with "
                               "the Prefect UI (flows/, docs/orchestration.md).")


@prefect_app.callback()
def prefect_main() -> None:
    # Prefect's client logs every HTTP request at INFO; the run logs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@prefect_app.command("run")
@friendly
def prefect_run(
    force: bool = typer.Option(False, help="Retrain even when the champion has today's data and params."),
    family: Annotated[list[str] | None, typer.Option(
        help="Model family to search (repeat); default search.families.")] = None,
    feature_set: Annotated[list[str] | None, typer.Option(
        help="Feature set (repeat); default featurize.feature_sets.")] = None,
    dask: str = typer.Option(None, help="Dask scheduler address, or 'local' for a 2-worker cluster "
                                        "(default $BBT_DASK_ADDRESS, else threads on this machine)."),
    batch_size: int = typer.Option(32, help="Images per detect-faces task."),
) -> None:
    """Run the retrain flow once (on PREFECT_API_URL's server, else a temporary one); print its outcome."""
    from flows.retrain import run_retrain

    outcome = run_retrain(dask, force=force, families=family or None, feature_sets=feature_set or None,
                          batch_size=batch_size)
    typer.echo(json.dumps(outcome))


@prefect_app.command("deploy")
@friendly
def prefect_deploy(cron: str = typer.Option(None, help="Cron schedule (default flows/deploy.py WEEKLY_CRON).")) -> None:
    """Create or update the deployment retrain/weekly on the server at PREFECT_API_URL."""
    from flows.deploy import WEEKLY_CRON, apply_deployment

    typer.echo(f"deployment retrain/weekly: {apply_deployment(cron or WEEKLY_CRON)}")


@prefect_app.command("serve")
@friendly
def prefect_serve(
    host: str = typer.Option("127.0.0.1", help="Interface of the Prefect server and UI."),
    port: int = typer.Option(4200, help="Port of the Prefect server and UI."),
    cron: str = typer.Option(None, help="Cron schedule (default flows/deploy.py WEEKLY_CRON)."),
) -> None:
    """Start the Prefect server (SQLite in PREFECT_HOME) and serve retrain/weekly until Ctrl-C."""
    from flows.deploy import WEEKLY_CRON, serve_locally

    serve_locally(host, port, cron or WEEKLY_CRON)
