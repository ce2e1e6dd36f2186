"""Cross-validation folds grouped by photo: no photo has faces on both sides of a fold.

Faces of one photo share its light, its camera and its compression, and a group photo holds several of the four:
folds that split a photo flatter the model. Here each photo's faces are held out together (scikit-learn's
StratifiedGroupKFold, the photo path as the group, stratified by label so every fold holds each actor and
strangers). A fold's model is fitted on the actors' faces of the other folds; it answers its own fold's faces and,
since strangers are never trained on, also the strangers of other folds whose photo has no face in its training
set (a stranger's answer is then the closest over those models: its distance to the whole gallery, as the refitted
model sees it, without ever putting its photo on both sides).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bbt import UNKNOWN
from bbt.errors import DataError

Fold = tuple[np.ndarray, np.ndarray]  # (training faces: actors only, answered faces), indices into the labels


def photo_of(image: str) -> str:
    """The photo a face comes from: its path (byte-identical copies are one photo already, bbt.pipeline.clean)."""
    return str(image)


def folder_actor(image: str) -> str:
    """The actor a photo was found under: its folder in data/raw (`howard/howard_images (3).jpg` -> howard)."""
    return str(image).split("/", 1)[0]


def grouped_split(labels: np.ndarray, photos: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray,
                                                                                                 np.ndarray]]:
    """StratifiedGroupKFold over the faces with a label (actors and UNKNOWN): (other folds, this fold) per fold,
    indices into `labels`; faces labelled "" (rejected) are in neither."""
    labels, photos = np.asarray(labels, dtype=object), np.asarray(photos, dtype=object)
    usable = np.flatnonzero(labels != "")
    n_photos = len(set(photos[usable]))
    if n_photos < n_splits:
        raise DataError(f"{n_photos} photos hold reviewed faces: grouped cross-validation needs at least "
                        f"{n_splits} (search.cv_folds); review more faces or lower search.cv_folds")
    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    return [(usable[rest], usable[held]) for rest, held in
            splitter.split(usable, labels[usable].astype(str), photos[usable].astype(str))]


def photo_folds(labels: np.ndarray, photos: np.ndarray, n_splits: int, seed: int) -> list[Fold]:
    """Grouped folds (module docstring): per fold, the actors' faces it trains on and every face it answers."""
    labels, photos = np.asarray(labels, dtype=object), np.asarray(photos, dtype=object)
    strangers = np.flatnonzero(labels == UNKNOWN)
    folds = []
    for rest, held in grouped_split(labels, photos, n_splits, seed):
        train = rest[labels[rest] != UNKNOWN]
        seen = set(photos[train])
        others = strangers[~np.isin(strangers, held) & ~np.isin(photos[strangers], list(seen))]
        folds.append((train, np.sort(np.concatenate([held, others]))))
    return folds


def check_grouped(folds: list[Fold], photos: np.ndarray) -> None:
    """Raise when any fold answers a face whose photo it trained on (the promise of this module)."""
    photos = np.asarray(photos, dtype=object)
    for number, (train, answered) in enumerate(folds):
        shared = set(photos[train]) & set(photos[answered])
        if shared:
            raise AssertionError(f"fold {number} trains on and answers faces of {sorted(shared)[:3]}")
