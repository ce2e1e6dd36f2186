"""Stage `evaluate`: score the chosen pipeline on the held-out test faces; metrics, confusion matrix."""

from __future__ import annotations

import json
import logging

import joblib
import matplotlib
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline

from bbt import artifacts
from bbt.errors import ModelError
from bbt.featurize import load_faces, load_split
from bbt.tracking import setup_tracking

matplotlib.use("Agg")
log = logging.getLogger(__name__)


def load_model() -> tuple[Pipeline, dict]:
    if not artifacts.MODEL.exists() or not artifacts.MODEL_INFO.exists():
        raise ModelError(f"{artifacts.MODEL} not found: run `dvc repro search` (or `bbt search`) first")
    return joblib.load(artifacts.MODEL), json.loads(artifacts.MODEL_INFO.read_text())


def test_faces() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test crops and labels, never seen by the search."""
    faces = load_faces()
    _, test = load_split()
    return faces["crops"][test], faces["labels"][test]


def score(model: Pipeline, crops: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, macro-F1 and the per-class report of a pipeline on labelled crops."""
    predicted = model.predict(crops)
    classes = sorted(set(labels) | set(predicted))
    report = classification_report(labels, predicted, labels=classes, output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "per_class": {c: {k: round(float(v), 4) for k, v in report[c].items()} for c in classes},
        "n_test": int(len(labels)),
        "predicted": [str(p) for p in predicted],
    }


def plot_confusion(labels: np.ndarray, predicted: list[str], classes: list[str]) -> None:
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(labels, predicted, labels=classes)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title("Test split confusion matrix")
    fig.tight_layout()
    fig.savefig(artifacts.CONFUSION_PNG, dpi=100)
    plt.close(fig)


def run_evaluate() -> dict:
    """Score the model on the test split, write metrics and plots, and log them to the search run."""
    model, info = load_model()
    crops, labels = test_faces()
    result = score(model, crops, labels)
    predicted = result.pop("predicted")
    artifacts.PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": labels, "predicted": predicted}).to_csv(artifacts.CONFUSION_CSV, index=False)
    plot_confusion(labels, predicted, info["classes"])
    metrics = {"test_accuracy": result["accuracy"], "test_f1_macro": result["f1_macro"],
               "n_test": result["n_test"], "per_class": result["per_class"]}
    artifacts.EVALUATE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    artifacts.EVALUATE_METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    setup_tracking()
    with mlflow.start_run(run_id=info["search_run_id"]):
        mlflow.log_metrics({"test_accuracy": result["accuracy"], "test_f1_macro": result["f1_macro"]})
        for actor, values in result["per_class"].items():
            mlflow.log_metric(f"test_f1_{actor}", values["f1-score"])
        mlflow.log_artifact(str(artifacts.EVALUATE_METRICS))
        mlflow.log_artifact(str(artifacts.CONFUSION_PNG))
    log.info("evaluate: test accuracy %.3f, macro-F1 %.3f on %d faces",
             result["accuracy"], result["f1_macro"], result["n_test"])
    return metrics
