"""Stage `evaluate`: score the chosen model on the held-out test split, strangers included, then judge its recipe
on every reviewed face by photo-grouped cross-validation (bbt/pipeline/photos.py).

Reports actor accuracy and macro-F1 (an actor answered "unknown" counts as wrong), the false-accept rate on the
strangers' faces, the confusion matrix (with "unknown"), and the curve of actor recall against false-accept rate
over the open-set rule's thresholds, with the learned threshold marked; the grouped evaluation's figures go to
reports/photos.json (all), metrics/photos.json (headline), plots/photos_curve.png and the search's MLflow run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import joblib
import matplotlib
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from bbt import CANT_TELL, UNKNOWN, artifacts
from bbt.artifacts import load_faces, load_features, load_split
from bbt.config import Params, load_params
from bbt.errors import ModelError
from bbt.model.candidates import Candidate, Head
from bbt.model.openset import EMBEDDING_SPACE, open_set_labels, open_set_scores, people_in
from bbt.model.quality import sharpness
from bbt.pipeline import photos
from bbt.registry.tracking import file_md5, model_run_id

matplotlib.use("Agg")
log = logging.getLogger(__name__)


def load_model() -> tuple[Any, dict]:
    if not artifacts.MODEL.exists() or not artifacts.MODEL_INFO.exists():
        raise ModelError(f"{artifacts.MODEL} not found: run `dvc repro search` (or `bbt search`) first")
    return joblib.load(artifacts.MODEL), json.loads(artifacts.MODEL_INFO.read_text())


def test_faces() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test crops and labels (actors, and UNKNOWN for strangers), never seen by the search."""
    faces = load_faces()
    _, test = load_split()
    return faces["crops"][test], faces["labels"][test].astype(object)


def answers_of(model: Any, crops: np.ndarray) -> np.ndarray:
    """What a model answers per face: an actor or UNKNOWN (a closed-set model of before never says UNKNOWN)."""
    return np.asarray(model.predict(crops), dtype=object)


def score(model: Any, crops: np.ndarray, labels: np.ndarray) -> dict:
    """Open-set scores (bbt.model.openset.open_set_scores) and the per-class report of a model on labelled crops."""
    answers = answers_of(model, crops)
    classes = [*people_in(np.concatenate([labels, answers])), *([UNKNOWN] if UNKNOWN in {*labels, *answers} else [])]
    report = classification_report(labels, answers, labels=classes, output_dict=True, zero_division=0)
    return {
        **open_set_scores(labels, answers),
        "per_class": {c: {k: round(float(v), 4) for k, v in report[c].items()} for c in classes},
        "n_actor_faces": int((labels != UNKNOWN).sum()),
        "n_stranger_faces": int((labels == UNKNOWN).sum()),
        "answers": [str(a) for a in answers],
    }


def open_set_curve(model: Any, crops: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Actor recall (named right and accepted) against false-accept rate at every threshold that changes them."""
    decisions = model.decide(crops)
    actors = labels != UNKNOWN
    thresholds = np.unique(np.concatenate([decisions.distances[np.isfinite(decisions.distances)],
                                           [decisions.threshold]]))
    rows = []
    for threshold in thresholds:
        answers = open_set_labels(decisions.closest, decisions.distances, threshold)
        rows.append({"threshold": round(float(threshold), 4),
                     "false_accept_rate": round(float((answers[~actors] != UNKNOWN).mean()), 4)
                     if (~actors).any() else 0.0,
                     "actor_recall": round(float((answers[actors] == labels[actors]).mean()), 4)})
    return pd.DataFrame(rows)


def plot_confusion(labels: np.ndarray, answers: list[str], classes: list[str]) -> None:
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(labels, answers, labels=classes)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("answered")
    ax.set_ylabel("actual (unknown = a stranger's face)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title("Test split confusion matrix")
    fig.tight_layout()
    fig.savefig(artifacts.CONFUSION_PNG, dpi=100)
    plt.close(fig)


def plot_curve(curve: pd.DataFrame, threshold: float, rule: str) -> None:
    chosen = curve.iloc[(curve.threshold - threshold).abs().argmin()]
    plot_recall_curve(curve, (chosen.false_accept_rate, chosen.actor_recall), f"learned threshold {threshold:.3f}",
                      f"Open-set rule '{rule}' on the test split", artifacts.OPEN_SET_PNG)


def plot_recall_curve(curve: pd.DataFrame, point: tuple[float, float], label: str, title: str, path: Path) -> None:
    """Actor recall against the false-accept rate as the threshold moves, with `point` (the answers given)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step(curve.false_accept_rate, curve.actor_recall, where="post", color="tab:blue")
    ax.plot([point[0]], [point[1]], "o", color="tab:red", label=label)
    ax.set_xlabel("false-accept rate (strangers given an actor's name)")
    ax.set_ylabel("actor recall (named right)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def champion_candidate(info: dict) -> Candidate:
    """The candidate the search chose, from artifacts/model/model.json."""
    head = Head(info["feature_set"], info["family"], tuple(sorted(info["hyperparameters"].items())))
    return Candidate(head, info["open_set"]["rule"])


def evaluate_photos(model: Any, info: dict, params: Params) -> dict:
    """The grouped evaluation of the champion's recipe over every reviewed face (bbt.pipeline.photos)."""
    faces = load_faces()
    candidate = champion_candidate(info)
    table = photos.grouped_answers(candidate, load_features(candidate.head.feature_set),
                                   load_features(EMBEDDING_SPACE), faces["labels"].astype(object),
                                   faces["images"].astype(object), faces["boxes"][:, 2], int(model.min_face_width),
                                   params.search, sharpness=sharpness(faces["crops"]),
                                   sharpness_edges=(float(getattr(model, "min_sharpness", 0.0)),
                                                    float(getattr(model, "min_sharpness_named", 0.0))))
    summary = photos.summarize(table)
    plot_photos_curve(photos.recall_curve(table), summary["faces"])
    artifacts.write_json(artifacts.PHOTOS_REPORT, summary)
    artifacts.write_json(artifacts.PHOTOS_METRICS, photos.headline(summary))
    figures = summary["faces"]
    log.info("evaluate (grouped by photo, %d actor and %d stranger faces): the folder's actor named in %.3f of "
             "%d photos; actors named right %.3f, as another actor %.3f, 'not one of the four' %.3f, 'can't tell' "
             "%.3f; strangers named %.3f", figures["actor_faces"], figures["stranger_faces"],
             summary["photos"]["photo_recall"], summary["photos"]["photos"], figures["actor_recall"],
             figures["actor_as_other_actor"], figures["actor_as_unknown"], figures["actor_cant_tell"],
             figures["stranger_false_accept"])
    return summary


def plot_photos_curve(curve: pd.DataFrame, figures: dict) -> None:
    plot_recall_curve(curve, (figures["stranger_false_accept"], figures["actor_recall"]),
                      "the answers given (each fold's threshold and band)", "Every reviewed face, CV grouped by photo",
                      artifacts.PHOTOS_CURVE_PNG)


def run_evaluate(params: Params | None = None) -> dict:
    """Score the model on the test split and by grouped CV, write metrics and plots, and log them to the run that
    made it."""
    params = params or load_params()
    model, info = load_model()
    crops, labels = test_faces()
    result = score(model, crops, labels)
    answers = result.pop("answers")
    artifacts.PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": labels, "predicted": answers}).to_csv(artifacts.CONFUSION_CSV, index=False)
    # A face answered "can't tell" is a column of its own, not dropped from the matrix.
    plot_confusion(labels, answers, [*info["classes"], UNKNOWN, *([CANT_TELL] if CANT_TELL in answers else [])])
    curve = open_set_curve(model, crops, labels)
    curve.to_csv(artifacts.OPEN_SET_CSV, index=False)
    plot_curve(curve, model.threshold, model.rule)
    metrics = {"test_actor_accuracy": result["actor_accuracy"], "test_actor_f1": result["actor_f1"],
               "test_false_accept_rate": result["false_accept_rate"], "test_open_set_f1": result["open_set_f1"],
               "n_actor_faces": result["n_actor_faces"], "n_stranger_faces": result["n_stranger_faces"],
               "per_class": result["per_class"]}
    artifacts.write_json(artifacts.EVALUATE_REPORT, metrics)
    # The DVC metric: the faces scored and the two figures register's gate looks at (accuracy is in the report:
    # the grouped evaluation's photo_recall took its column, so `dvc metrics show` stays 160 columns wide).
    artifacts.write_json(artifacts.EVALUATE_METRICS, {
        "faces": metrics["n_actor_faces"], "strangers": metrics["n_stranger_faces"],
        "actor_f1": round(metrics["test_actor_f1"], 4),
        "false_accept_rate": round(metrics["test_false_accept_rate"], 4)})
    grouped = evaluate_photos(model, info, params)
    with mlflow.start_run(run_id=model_run_id(file_md5(artifacts.MODEL))):
        mlflow.log_metrics(photos.flat_metrics(grouped))
        mlflow.log_artifact(str(artifacts.PHOTOS_REPORT))
        mlflow.log_artifact(str(artifacts.PHOTOS_CURVE_PNG))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        for actor, values in result["per_class"].items():
            mlflow.log_metric(f"test_f1_{actor}", values["f1-score"])
        for path in (artifacts.EVALUATE_REPORT, artifacts.CONFUSION_PNG, artifacts.OPEN_SET_PNG):
            mlflow.log_artifact(str(path))
    log.info("evaluate: actors named right %.3f (macro-F1 %.3f) on %d faces; %d of %d strangers given a name "
             "(false-accept rate %.3f)", result["actor_accuracy"], result["actor_f1"], result["n_actor_faces"],
             round(result["false_accept_rate"] * result["n_stranger_faces"]), result["n_stranger_faces"],
             result["false_accept_rate"])
    return metrics
