"""Stage `search`: cross-validate every candidate on the training split, one MLflow child run each.

The feature transformers are stateless, so cross-validating the scaler and classifier on the cached
feature matrix is the same as cross-validating the whole pipeline, at a fraction of the cost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

import joblib
import mlflow
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from bbt import artifacts
from bbt.candidates import Candidate, candidates
from bbt.config import Params
from bbt.errors import DataError
from bbt.featurize import build_features, load_faces, load_split
from bbt.progress import progress
from bbt.tracking import corrections_hash, data_hash, git_commit, setup_tracking

log = logging.getLogger(__name__)
SCORING = {"accuracy": "accuracy", "f1_macro": "f1_macro"}


def load_features(feature_set: str) -> np.ndarray:
    path = artifacts.features_file(feature_set)
    if not path.exists():
        raise DataError(f"{path} not found: run `dvc repro featurize` with {feature_set!r} in featurize.feature_sets")
    with np.load(path) as cached:
        return cached["X"]


def flat_params(params: Params) -> dict[str, str]:
    """params.yaml flattened to `section.key` strings, as MLflow params."""
    flat: dict[str, str] = {}
    for section, values in asdict(params).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return flat


def evaluate_candidate(candidate: Candidate, X: np.ndarray, y: np.ndarray, folds: StratifiedKFold, seed: int) -> dict:
    """Stratified K-fold CV scores and timings of one candidate."""
    scores = cross_validate(candidate.head(seed), X, y, cv=folds, scoring=SCORING)
    return {
        "cv_accuracy_mean": float(np.mean(scores["test_accuracy"])),
        "cv_accuracy_std": float(np.std(scores["test_accuracy"])),
        "cv_f1_macro_mean": float(np.mean(scores["test_f1_macro"])),
        "cv_f1_macro_std": float(np.std(scores["test_f1_macro"])),
        "fit_time_s": float(np.mean(scores["fit_time"])),
        "predict_time_s": float(np.mean(scores["score_time"])),
    }


def run_search(params: Params) -> dict:
    """Search every candidate, refit the best on the training split, save it with the leaderboard."""
    faces = load_faces()
    train, _ = load_split()
    y = faces["labels"][train]
    grid = candidates(params.search, params.featurize.feature_sets)
    features = {fs: load_features(fs)[train] for fs in params.featurize.feature_sets}
    folds = StratifiedKFold(params.search.cv_folds, shuffle=True, random_state=params.search.seed)
    setup_tracking()
    rows = []
    with mlflow.start_run(run_name=f"grid-search-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.set_tags({"stage": "search", "git_commit": git_commit(), "data_hash": data_hash(),
                         "corrections_hash": corrections_hash(params.data.corrections)})
        mlflow.log_params(flat_params(params))
        mlflow.log_params({"n_candidates": len(grid), "n_train_faces": len(train)})
        with progress("search: cross-validating candidates", total=len(grid)) as advance:
            for candidate in grid:
                scores = evaluate_candidate(candidate, features[candidate.feature_set], y, folds, params.search.seed)
                with mlflow.start_run(run_name=candidate.name, nested=True):
                    mlflow.set_tags({"candidate": candidate.name, "stage": "search-candidate"})
                    mlflow.log_params({"feature_set": candidate.feature_set, "family": candidate.family,
                                       **dict(candidate.hyperparameters)})
                    mlflow.log_metrics(scores)
                rows.append({"candidate": candidate.name, **scores})
                log.info("search: %-60s CV macro-F1 %.3f ± %.3f", candidate.name,
                         scores["cv_f1_macro_mean"], scores["cv_f1_macro_std"])
                advance()
        # Best by CV macro-F1; ties go to the faster candidate.
        order = sorted(range(len(grid)), key=lambda i: (-rows[i]["cv_f1_macro_mean"], rows[i]["fit_time_s"]))
        best, best_scores = grid[order[0]], rows[order[0]]
        leaderboard = pd.DataFrame([rows[i] for i in order])
        artifacts.LEADERBOARD.parent.mkdir(parents=True, exist_ok=True)
        leaderboard.to_csv(artifacts.LEADERBOARD, index=False)
        mlflow.log_artifact(str(artifacts.LEADERBOARD))
        mlflow.log_metrics({f"best_{k}": v for k, v in best_scores.items() if k != "candidate"})
        mlflow.set_tag("best_candidate", best.name)
        model = refit(best, features[best.feature_set], y, params)
        save_model(model, best, best_scores, parent.info.run_id, faces)
    summary = {"best_candidate": best.name, "n_candidates": len(grid),
               **{k: v for k, v in best_scores.items() if k != "candidate"}}
    artifacts.SEARCH_METRICS.parent.mkdir(parents=True, exist_ok=True)
    artifacts.SEARCH_METRICS.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("search: best %s, CV macro-F1 %.3f", best.name, best_scores["cv_f1_macro_mean"])
    return summary


def refit(best: Candidate, X: np.ndarray, y: np.ndarray, params: Params) -> Pipeline:
    """Fit the winner on the whole training split and put its feature transformer in front."""
    head = best.head(params.search.seed).fit(X, y)
    features = build_features(best.feature_set, params.featurize).fit(None)
    return Pipeline([("features", features), *head.steps])


def save_model(model: Pipeline, best: Candidate, scores: dict, run_id: str, faces: dict) -> None:
    """The refitted pipeline and what serving needs to know about it (detector, crop size, classes)."""
    artifacts.MODEL.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, artifacts.MODEL)
    info = {
        "search_run_id": run_id,
        "candidate": best.name,
        "feature_set": best.feature_set,
        "family": best.family,
        "hyperparameters": dict(best.hyperparameters),
        "cv_f1_macro": scores["cv_f1_macro_mean"],
        "classes": [str(c) for c in model.classes_],
        **json.loads(str(faces["settings"])),
    }
    artifacts.MODEL_INFO.write_text(json.dumps(info, indent=2) + "\n")
