"""Stage `featurize`: split the labelled faces once, and cache each feature set's matrix for the search."""

from __future__ import annotations

import logging

import numpy as np

from bbt import UNKNOWN, artifacts
from bbt.artifacts import load_faces
from bbt.config import FeaturizeParams, SplitParams
from bbt.errors import DataError
from bbt.model.feature_sets import build_features
from bbt.model.openset import EMBEDDING_SPACE
from bbt.model.photo_folds import grouped_split

log = logging.getLogger(__name__)


def split_faces(labels: np.ndarray, photos: np.ndarray, params: SplitParams) -> tuple[np.ndarray, np.ndarray]:
    """A train/test split, with a fixed seed, of the indices of the faces with a label: the actors' and the
    strangers' (UNKNOWN), stratified like a fifth class, and grouped by photo (no photo has faces on both sides:
    bbt.model.photo_folds). The test split is one fold of round(1 / test_size). Rejected faces ("") are in
    neither."""
    usable = np.flatnonzero(labels != "")
    counts = {str(label): int((labels == label).sum()) for label in np.unique(labels[usable])}
    too_few = {label: n for label, n in counts.items() if n < 2}
    if too_few:
        raise DataError(f"every actor (and the strangers, if any) needs at least 2 reviewed faces to split, "
                        f"got {too_few}")
    train, test = grouped_split(labels, photos, max(2, round(1 / params.test_size)), params.seed)[0]
    return np.sort(train), np.sort(test)


def feature_sets_to_cache(params: FeaturizeParams) -> list[str]:
    """The searched feature sets, plus the embedding the open-set rule always works in."""
    return [*params.feature_sets, *([] if EMBEDDING_SPACE in params.feature_sets else [EMBEDDING_SPACE])]


def run_featurize(split: SplitParams, params: FeaturizeParams) -> dict[str, int]:
    """Write the split and one feature matrix per feature set; returns face counts per split."""
    faces = load_faces()
    train, test = split_faces(faces["labels"], faces["images"], split)
    artifacts.FEATURES_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(artifacts.SPLIT, train=train, test=test)
    for feature_set in feature_sets_to_cache(params):
        log.info("featurize: %s over %d faces", feature_set, len(faces["crops"]))
        X = build_features(feature_set, params).fit(faces["crops"]).transform(faces["crops"])
        np.savez_compressed(artifacts.features_file(feature_set), X=X, y=faces["labels"])
        log.info("featurize: %s -> %s features", feature_set, X.shape[1])
    strangers = {name: int((faces["labels"][part] == UNKNOWN).sum()) for name, part in (("train", train),
                                                                                       ("test", test))}
    log.info("split: %d training faces (%d strangers), %d held-out test faces (%d strangers)", len(train),
             strangers["train"], len(test), strangers["test"])
    return {"train": len(train), "test": len(test)}
