"""Cross-validation grouped by photo: no photo has faces on both sides, and strangers are answered as widely as
that allows."""

from __future__ import annotations

import numpy as np
import pytest

from bbt import UNKNOWN
from bbt.errors import DataError
from bbt.model.photo_folds import check_grouped, folder_actor, grouped_split, photo_folds

ACTOR_LABELS = ("howard", "leonard", "raj", "sheldon")


def faces(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """40 photos: 20 of one actor alone, 10 group photos of two actors and a stranger, 10 of a stranger alone,
    and one rejected face ("") in a group photo."""
    rng = np.random.default_rng(seed)
    labels, photos = [], []
    for i in range(20):
        labels.append(ACTOR_LABELS[i % 4])
        photos.append(f"{ACTOR_LABELS[i % 4]}/solo {i}.jpg")
    for i in range(10):
        pair = rng.choice(ACTOR_LABELS, 2, replace=False)
        labels += [*pair, UNKNOWN]
        photos += [f"{pair[0]}/group {i}.jpg"] * 3
    for i in range(10):
        labels.append(UNKNOWN)
        photos.append(f"raj/stranger {i}.jpg")
    labels.append("")
    photos.append(photos[20])
    return np.array(labels, dtype=object), np.array(photos, dtype=object)


def test_no_photo_has_faces_on_both_sides_of_a_fold() -> None:
    labels, photos = faces()
    folds = photo_folds(labels, photos, 5, seed=42)
    check_grouped(folds, photos)
    for train, answered in folds:
        assert not set(photos[train]) & set(photos[answered])
        assert set(labels[train]) <= set(ACTOR_LABELS)  # strangers are never trained on


def test_every_reviewed_face_is_answered_and_each_actor_face_once() -> None:
    labels, photos = faces()
    folds = photo_folds(labels, photos, 5, seed=42)
    answered = np.concatenate([a for _, a in folds])
    counts = np.bincount(answered, minlength=len(labels))
    actors = np.isin(labels, ACTOR_LABELS)
    assert (counts[actors] == 1).all()
    assert (counts[labels == UNKNOWN] >= 1).all()
    assert (counts[labels == ""] == 0).all()  # rejected faces are in no fold


def test_a_stranger_alone_in_its_photo_is_answered_by_every_fold_one_in_a_group_photo_by_one() -> None:
    labels, photos = faces()
    folds = photo_folds(labels, photos, 5, seed=42)
    answered = np.bincount(np.concatenate([a for _, a in folds]), minlength=len(labels))
    alone = np.array([p.startswith("raj/stranger") for p in photos])
    in_group = (labels == UNKNOWN) & ~alone
    assert (answered[alone] == 5).all()
    assert (answered[in_group] == 1).all()


def test_the_folds_are_the_same_for_the_same_seed_and_stratified() -> None:
    labels, photos = faces()
    first, again = grouped_split(labels, photos, 5, 7), grouped_split(labels, photos, 5, 7)
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(first, again))
    for _, held in first:
        assert UNKNOWN in set(labels[held])


def test_too_few_photos_for_the_folds_is_a_clear_error() -> None:
    labels = np.array(["howard", "raj", UNKNOWN], dtype=object)
    with pytest.raises(DataError, match=r"3 photos .* search.cv_folds"):
        grouped_split(labels, np.array(["a.jpg", "b.jpg", "c.jpg"], dtype=object), 5, 0)


def test_the_folder_names_the_actor_a_photo_was_found_under() -> None:
    assert folder_actor("howard/howard_images (3).jpeg") == "howard"
