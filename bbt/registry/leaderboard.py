"""The candidates of the latest grid search, read back from MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd

from bbt.errors import ModelError
from bbt.registry.tracking import EXPERIMENT, setup_tracking

SHOWN = ["candidate", "objective", "cv_false_accept_rate", "threshold", "cv_actor_f1", "fit_time_s"]


def latest_leaderboard(top: int | None = None) -> tuple[str, pd.DataFrame]:
    """(search run id, candidates best first) of the most recent search: the search's own ranking (its
    leaderboard.csv artifact, ties to the simpler candidate), with each child run's fit time."""
    setup_tracking()
    searches = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="tags.stage = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if searches.empty:
        # After a wiped store `dvc repro` restores the registry only (register's output went with it), not the
        # search's runs: its products are still current.
        raise ModelError("no grid search in this MLflow store: run `dvc repro` (or, when the pipeline is up to date "
                         "and the store was wiped, `dvc repro --force --single-item search`)")
    parent = searches.iloc[0]["run_id"]
    objective = searches.iloc[0].get("tags.objective") or "open_set_f05"
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="leaderboard.csv"))
    children = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10_000,
    )
    fit = children.set_index("tags.candidate")["metrics.fit_time_s"] if not children.empty else pd.Series()
    board = board.assign(objective=board[f"cv_{objective}"], fit_time_s=board.candidate.map(fit))
    table = board[SHOWN].rename(columns={"objective": f"cv_{objective}"})
    table.index += 1
    return parent, table.head(top) if top else table
