"""Where each stage writes its products (relative to the project root), so producers and consumers agree."""

import json
from pathlib import Path

import numpy as np

from bbt.errors import DataError

ARTIFACTS = Path("artifacts")
FACES = ARTIFACTS / "faces" / "faces.npz"
DETECTIONS = ARTIFACTS / "faces" / "detections.csv"
# Per-photo detections kept between clean runs (bbt/pipeline/detection_cache.py); not a stage product, DVC never sees it.
CLEAN_CACHE = ARTIFACTS / "cache" / "clean"
FEATURES_DIR = ARTIFACTS / "features"
SPLIT = FEATURES_DIR / "split.npz"
MODEL = ARTIFACTS / "model" / "model.joblib"
MODEL_INFO = ARTIFACTS / "model" / "model.json"
LEADERBOARD = ARTIFACTS / "search" / "leaderboard.csv"
SEARCH_RUN = ARTIFACTS / "search" / "search.json"

# DVC metrics are each stage's headline figures, short enough that `dvc metrics show` fits a terminal (160
# columns); the detail (per actor, per class, every score) goes to the stage's report in reports/.
METRICS = Path("metrics")
CLEAN_METRICS = METRICS / "clean.json"
SEARCH_METRICS = METRICS / "search.json"
EVALUATE_METRICS = METRICS / "evaluate.json"
AUDIT_METRICS = METRICS / "audit.json"
PHOTOS_METRICS = METRICS / "photos.json"  # evaluate's grouped evaluation (bbt/pipeline/photos.py)

REPORTS = Path("reports")
AUDIT_CSV = REPORTS / "label_audit.csv"
AUDIT_PNG = REPORTS / "label_audit.png"
REJECTED_CSV = REPORTS / "rejected_review.csv"
REJECTED_PNG = REPORTS / "rejected_review.png"
FACE_WIDTH_CSV = REPORTS / "face_width.csv"
SHARPNESS_CSV = REPORTS / "sharpness.csv"
CLEAN_REPORT = REPORTS / "clean.json"
AUDIT_REPORT = REPORTS / "audit.json"
SEARCH_REPORT = REPORTS / "search.json"
EVALUATE_REPORT = REPORTS / "evaluate.json"
PHOTOS_REPORT = REPORTS / "photos.json"
# What register registered and what release went through: names and hashes, not figures, so not DVC metrics.
REGISTER_REPORT = REPORTS / "register.json"
RELEASE_REPORT = REPORTS / "release.json"

PLOTS = Path("plots")
CONFUSION_CSV = PLOTS / "confusion.csv"
CONFUSION_PNG = PLOTS / "confusion_matrix.png"
OPEN_SET_CSV = PLOTS / "open_set.csv"
OPEN_SET_PNG = PLOTS / "open_set_curve.png"
PHOTOS_CURVE_PNG = PLOTS / "photos_curve.png"


def write_json(path: Path, data: dict) -> None:
    """A stage's JSON product (metric, report), indented, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def features_file(feature_set: str) -> Path:
    """The cached feature matrix of one feature set."""
    return FEATURES_DIR / f"{feature_set}.npz"


def load_features(feature_set: str) -> np.ndarray:
    """The cached feature matrix of one feature set, a row per face of faces.npz; DataError when featurize has not
    cached it."""
    path = features_file(feature_set)
    if not path.exists():
        raise DataError(f"{path} not found: run `dvc repro featurize` (it caches {feature_set!r})")
    with np.load(path) as cached:
        return cached["X"]


def load_faces() -> dict[str, np.ndarray]:
    """The labelled face crops written by the clean stage."""
    if not FACES.exists():
        raise DataError(f"{FACES} not found: run `dvc repro clean` (or `bbt clean`) first")
    with np.load(FACES) as faces:
        return {key: faces[key] for key in faces.files}


def load_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices into the faces of the training and the held-out test split."""
    if not SPLIT.exists():
        raise DataError(f"{SPLIT} not found: run `dvc repro featurize` (or `bbt featurize`) first")
    with np.load(SPLIT) as split:
        return split["train"], split["test"]
