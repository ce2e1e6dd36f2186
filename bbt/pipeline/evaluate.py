"""Stage `evaluate`: score the chosen model on the held-out test faces, strangers included.

Reports actor accuracy and macro-F1 (an actor answered "unknown" counts as wrong), the false-accept rate on the
strangers' faces, the confusion matrix (with "unknown"), and the curve of actor recall against false-accept rate
over the open-set rule's thresholds, with the learned threshold marked.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import joblib
import matplotlib
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from bbt import UNKNOWN, artifacts
from bbt.artifacts import load_faces, load_split
from bbt.errors import ModelError
from bbt.model.openset import open_set_labels, open_set_scores, people_in
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
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step(curve.false_accept_rate, curve.actor_recall, where="post", color="tab:blue")
    chosen = curve.iloc[(curve.threshold - threshold).abs().argmin()]
    ax.plot([chosen.false_accept_rate], [chosen.actor_recall], "o", color="tab:red",
            label=f"learned threshold {threshold:.3f}")
    ax.set_xlabel("false-accept rate (strangers given an actor's name)")
    ax.set_ylabel("actor recall (named right)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Open-set rule '{rule}' on the test split")
    fig.tight_layout()
    fig.savefig(artifacts.OPEN_SET_PNG, dpi=100)
    plt.close(fig)


def run_evaluate() -> dict:
    """Score the model on the test split, write metrics and plots, and log them to the run that made it."""
    model, info = load_model()
    crops, labels = test_faces()
    result = score(model, crops, labels)
    answers = result.pop("answers")
    artifacts.PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": labels, "predicted": answers}).to_csv(artifacts.CONFUSION_CSV, index=False)
    plot_confusion(labels, answers, [*info["classes"], UNKNOWN])
    curve = open_set_curve(model, crops, labels)
    curve.to_csv(artifacts.OPEN_SET_CSV, index=False)
    plot_curve(curve, model.threshold, model.rule)
    metrics = {"test_actor_accuracy": result["actor_accuracy"], "test_actor_f1": result["actor_f1"],
               "test_false_accept_rate": result["false_accept_rate"], "test_open_set_f1": result["open_set_f1"],
               "n_actor_faces": result["n_actor_faces"], "n_stranger_faces": result["n_stranger_faces"],
               "per_class": result["per_class"]}
    artifacts.write_json(artifacts.EVALUATE_REPORT, metrics)
    # The DVC metric: the faces scored and the three figures register's gate and the release look at.
    artifacts.write_json(artifacts.EVALUATE_METRICS, {
        "faces": metrics["n_actor_faces"], "strangers": metrics["n_stranger_faces"],
        "actor_f1": round(metrics["test_actor_f1"], 4), "accuracy": round(metrics["test_actor_accuracy"], 4),
        "false_accept_rate": round(metrics["test_false_accept_rate"], 4)})
    with mlflow.start_run(run_id=model_run_id(file_md5(artifacts.MODEL))):
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
