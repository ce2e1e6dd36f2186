"""The candidates of the latest grid search, read back from MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd

from bbt.errors import ModelError
from bbt.tracking import EXPERIMENT, setup_tracking

COLUMNS = {
    "tags.candidate": "candidate",
    "metrics.cv_open_set_f1": "cv_open_set_f1",
    "metrics.cv_actor_f1": "cv_actor_f1",
    "metrics.cv_false_accept_rate": "cv_false_accepts",
    "metrics.threshold": "threshold",
    "metrics.cv_f1_macro_mean": "closed_set_f1",
    "metrics.fit_time_s": "fit_s",
}


def latest_leaderboard(top: int | None = None) -> tuple[str, pd.DataFrame]:
    """(search run id, candidates best first by the search's objective) of the most recent search."""
    setup_tracking()
    searches = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="tags.stage = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if searches.empty:
        raise ModelError("no grid search in the MLflow store yet: run `dvc repro` first")
    parent = searches.iloc[0]["run_id"]
    objective = searches.iloc[0].get("tags.objective") or "open_set_f1"
    children = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
        max_results=10_000,
    )
    table = children[[c for c in COLUMNS if c in children.columns]].rename(columns=COLUMNS)
    # The search's own order (ties to the simpler candidate) is artifacts/search/leaderboard.csv; here ties
    # fall to the name.
    table = table.sort_values([f"cv_{objective}", "cv_false_accepts", "candidate"],
                              ascending=[False, True, True]).reset_index(drop=True)
    table.index += 1
    return parent, table.head(top) if top else table
