"""The `bbt` command: the pipeline stages (run by dvc.yaml and the Prefect flow) and the tools around them."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import ClassVar

import click
import typer
from typer.core import TyperGroup

from bbt.cli_support import friendly, setup_logging
from bbt.deploy.cli import deploy_app
from bbt.release.cli import release_app


class WithLazyApps(TyperGroup):
    """The `bbt` group plus sub-apps from outside the library, imported only when they are named or listed.

    The one seam between the library and the orchestration package: `bbt prefect ...` lives in flows/cli.py,
    and the library never imports `flows` (tests/unit/test_imports.py checks it).
    """

    lazy_apps: ClassVar[dict[str, str]] = {"prefect": "flows.cli:prefect_app"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *self.lazy_apps]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_apps:
            return super().get_command(ctx, cmd_name)
        module, name = self.lazy_apps[cmd_name].split(":")
        return typer.main.get_command(getattr(importlib.import_module(module), name))


app = typer.Typer(help="Recognise the Big Bang Theory lead actors: pipeline stages, registry and serving.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=WithLazyApps)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


@app.command()
@friendly
def pull() -> None:
    """`dvc pull` of the photos (data/), after checking that a local DVC remote exists."""
    from bbt.pipeline.remote import pull as run_pull

    run_pull()


@app.command()
@friendly
def clean() -> None:
    """Stage 1: decode photos, detect faces, keep the accepted ones (artifacts/faces, metrics/clean.json)."""
    from bbt.config import load_params
    from bbt.pipeline.clean import cast_of, run_clean

    params = load_params()
    run_clean(params.data, params.clean, cast_of(params))


@app.command()
@friendly
def featurize() -> None:
    """Stage 2: split train/test and cache each feature set's matrix (artifacts/features)."""
    from bbt.config import load_params
    from bbt.pipeline.featurize import run_featurize

    params = load_params()
    run_featurize(params.split, params.featurize)


@app.command()
@friendly
def audit() -> None:
    """Flag accepted faces whose label the other faces disagree with (reports/label_audit.*) for a second review."""
    from bbt.config import load_params
    from bbt.pipeline.audit import run_audit

    params = load_params()
    run_audit(params.audit, params.featurize, params.data, params.search)


@app.command()
@friendly
def search() -> None:
    """Stage 3: cross-validate every candidate, one MLflow child run each; refit the best."""
    from bbt.config import load_params
    from bbt.pipeline.search import run_search

    run_search(load_params())


@app.command()
@friendly
def evaluate() -> None:
    """Stage 4: score the best pipeline on the held-out test split (metrics/evaluate.json, plots/)."""
    from bbt.pipeline.evaluate import run_evaluate

    run_evaluate()


@app.command()
@friendly
def register() -> None:
    """Stage 5: register artifacts/model in MLflow unless it is there; move @champion only if it is no worse.

    Also what brings the registry back after a wiped mlruns/ or with a new tracking server, without retraining."""
    from bbt.config import load_params
    from bbt.pipeline.register import run_register

    run_register(load_params())  # it logs what it did, once


@app.command()
@friendly
def card(
    version: str = typer.Argument("", help="The registry version (default: the one register.alias points at)."),
    write: bool = typer.Option(False, "--write", help="First write VERSION's card; its model must be the one in "
                                                      "artifacts/model (a version registered before cards)."),
) -> None:
    """Print a registered version's model card (markdown), as `bbt register` logged it with the model."""
    from mlflow import MlflowClient

    from bbt.config import load_params
    from bbt.errors import ModelError
    from bbt.pipeline.register import run_write_card
    from bbt.registry.model_cards import alias_version, require_card
    from bbt.registry.tracking import setup_tracking

    params = load_params()
    if write and not version:
        raise ModelError("`bbt card --write` needs the VERSION whose card to write, e.g. `bbt card --write 3`")
    if write:
        run_write_card(params, version)
    setup_tracking()
    client = MlflowClient()
    name = params.register.model_name
    typer.echo(require_card(client, name, version or alias_version(client, name, params.register.alias)), nl=False)


@app.command()
@friendly
def leaderboard(top: int = typer.Option(0, help="Show only the best N candidates (0 = all).")) -> None:
    """Print the candidates of the latest grid search, best first, from MLflow."""
    from rich.console import Console
    from rich.table import Table

    from bbt.registry.leaderboard import latest_leaderboard

    run_id, board = latest_leaderboard(top or None)
    table = Table(title=f"Grid search {run_id} (MLflow)")
    table.add_column("#", justify="right")
    for column in board.columns:
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for rank, row in board.iterrows():
        table.add_row(str(rank), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=200).print(table)


@app.command()
def ui(port: int = typer.Option(5000, help="Port on 127.0.0.1.")) -> None:
    """Open the MLflow UI over the project's store on http://127.0.0.1:PORT, at the experiment's training runs."""
    from bbt.registry.tracking import setup_tracking, tracking_uri

    experiment_id = setup_tracking()
    # MLflow 3 opens experiments on its GenAI pages unless the URL asks for the machine-learning view.
    url = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    typer.echo(f"MLflow UI: {url}\n(store: {tracking_uri()}; the UI answers in a few seconds; Ctrl-C stops it)")
    # One worker and no job runner: MLflow's defaults start a dozen processes, ~40 s on 2 cores. MLflow's server
    # imports Starlette's deprecated WSGI middleware (mlflow/mlflow#24074, open): that one warning is not shown.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated"}
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execve(mlflow, [mlflow, "ui", "--backend-store-uri", tracking_uri(), "--registry-store-uri", tracking_uri(),
                       "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env)


@app.command("import-champion")
@friendly
def import_champion() -> None:
    """Copy models:/<register.model_name>@<register.alias> into the BentoML model store (for `bentoml build`)."""
    from bbt.config import load_params
    from bbt.registry.bento_store import import_champion as run_import

    params = load_params().register
    typer.echo(str(run_import(params.model_name, params.alias)))


@app.command()
@friendly
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(3000, help="Port to listen on."),
) -> None:
    """Serve the champion with the web page: import models:/...@champion into BentoML, then `bentoml serve`."""
    from bbt.config import load_params
    from bbt.registry.bento_store import import_champion as run_import

    params = load_params().register
    tag = run_import(params.model_name, params.alias)
    typer.echo(f"serving {tag} on http://{host}:{port} (page /, API /classify, docs /docs); Ctrl-C stops it")
    # A fresh interpreter (not this one, which imported MLflow to import the champion) runs the server.
    os.execv(sys.executable, [sys.executable, "-m", "bbt.serving.bento_serve", "bbt.serving.service:ActorService",
                              "--host", host, "--port", str(port)])


@app.command()
@friendly
def review(
    port: int = typer.Option(8501, help="Port on 127.0.0.1 (the review app never listens elsewhere)."),
    model: str = typer.Option("", help="The model whose answers are shown (default models:/<register.model_name>"
                                       "@<register.alias>; 'none' shows none)."),
    find: str = typer.Option("", help="Also queue the faces review/corrections.csv already judges whose reason "
                                      "holds this text (any case), to judge again: e.g. to name a person reviewed "
                                      "as a stranger (docs/review.md, 'Adding a person')."),
) -> None:
    """Judge the faces waiting for a verdict (feedback, audit suspects, rejected boxes, unreviewed detections) on a
    local page, one key per verdict; each verdict is saved to data.corrections (review/corrections.csv) at once."""
    from pathlib import Path

    from bbt.review.app import serve_review

    serve_review(Path("."), port, model or None, find)


@app.command()
@friendly
def monitor(
    since: str = typer.Option("", help="Start of the period: an ISO date or date-time in UTC (default: --days "
                                       "before --until)."),
    until: str = typer.Option("", help="End of the period, excluded (default: now)."),
    days: int = typer.Option(0, help="The period's length in days when --since is not given (default: "
                                     "monitor.days)."),
    log_dir: str = typer.Option("", help="The service's monitoring logs (default: serve.monitoring_dir)."),
    png: str = typer.Option("reports/monitor.png", help="Where to write the report's picture."),
    model_version: str = typer.Option("", help="The registry version to judge (default: the one that answered "
                                               "last in the period)."),
) -> None:
    """What the service answered in a period against the champion's answers on the test split: a table, a PNG,
    and exit status 3 when the answers drifted (share of "unknown", each actor's confidences)."""
    from datetime import UTC, datetime

    from bbt.config import load_params
    from bbt.monitoring.logs import period_of
    from bbt.monitoring.report import run_monitor

    params = load_params()
    period = period_of(since or None, until or None, days or params.monitor.days, datetime.now(UTC))
    status = run_monitor(Path(log_dir) if log_dir else params.serve.monitoring_dir, period, Path(png),
                         params.monitor.alpha, params.monitor.min_faces, model_version or None)
    raise typer.Exit(status)


app.add_typer(deploy_app, name="deploy")
app.add_typer(release_app, name="release")
