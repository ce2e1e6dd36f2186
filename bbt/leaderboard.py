"""The candidates of the latest grid search, read back from MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd

from bbt.errors import ModelError
from bbt.tracking import EXPERIMENT, setup_tracking

COLUMNS = {
    "tags.candidate": "candidate",
    "metrics.cv_f1_macro_mean": "cv_f1_macro",
    "metrics.cv_f1_macro_std": "f1_std",
    "metrics.cv_accuracy_mean": "cv_accuracy",
    "metrics.fit_time_s": "fit_s",
}


def latest_leaderboard(top: int | None = None) -> tuple[str, pd.DataFrame]:
    """(search run id, candidates sorted by CV macro-F1) of the most recent search."""
    setup_tracking()
    searches = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="tags.stage = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if searches.empty:
        raise ModelError("no grid search in the MLflow store yet: run `dvc repro` first")
    parent = searches.iloc[0]["run_id"]
    children = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
        max_results=10_000,
    )
    table = children[[c for c in COLUMNS if c in children.columns]].rename(columns=COLUMNS)
    table = table.sort_values(["cv_f1_macro", "fit_s"], ascending=[False, True]).reset_index(drop=True)
    table.index += 1
    return parent, table.head(top) if top else table
