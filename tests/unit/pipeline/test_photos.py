"""The grouped evaluation: every reviewed face answered once by a model that never saw its photo, and the figures
users see (by face width, by photo, actors named as another actor apart from actors left unnamed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bbt import CANT_TELL, UNKNOWN
from bbt.config import SearchParams
from bbt.model.candidates import Candidate, Head
from bbt.pipeline.photos import (
    by_width,
    confused_pairs,
    face_figures,
    grouped_answers,
    headline,
    photo_figures,
    summarize,
)

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")


def clustered_photos(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of 4 actors (12 faces each) and 15 strangers, two faces to a photo, with widths."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(len(ACTORS), 8))
    X = np.concatenate([c + rng.normal(0, 0.3, size=(12, 8)) for c in centres] + [rng.normal(0, 3, (15, 8)) + 12])
    labels = np.array([*np.repeat(ACTORS, 12), *[UNKNOWN] * 15], dtype=object)
    photos = np.array([f"{labels[i] if labels[i] != UNKNOWN else 'raj'}/photo {i // 2}.jpg"
                       for i in range(len(labels))], dtype=object)
    widths = np.tile([20, 40, 90, 200], len(labels) // 4 + 1)[:len(labels)]
    return X, labels, photos, widths


def test_every_face_is_answered_once_by_a_model_that_never_saw_its_photo() -> None:
    X, labels, photos, widths = clustered_photos()
    candidate = Candidate(Head("face_embedding", "logistic_regression", (("C", 1),)), "nearest_face")
    table = grouped_answers(candidate, X, X, labels, photos, widths, 28, SearchParams())
    assert list(table.face) == list(range(len(labels)))
    for fold, part in table.groupby("fold"):
        others = table[table.fold != fold]
        assert not set(part.photo) & set(others.photo)
    judged = table[table.width >= 28]
    assert (judged[judged.label != UNKNOWN].answer == judged[judged.label != UNKNOWN].label).all()
    assert set(judged[judged.label == UNKNOWN].answer) <= {UNKNOWN, CANT_TELL}
    assert set(table[table.width < 28].answer) == {CANT_TELL}  # too narrow: never "not one of the four"


def answered(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"photo": p, "label": label, "answer": a, "width": w, "closest": a if a in ACTORS else
                          "howard", "distance": 0.3, "fold": 0} for p, label, a, w in rows])


def test_the_figures_keep_an_actor_named_as_another_apart_from_an_actor_left_unnamed() -> None:
    table = answered([("howard/1.jpg", "howard", "howard", 200), ("howard/2.jpg", "howard", "raj", 100),
                      ("howard/3.jpg", "howard", UNKNOWN, 50), ("howard/4.jpg", "howard", CANT_TELL, 20),
                      ("raj/5.jpg", UNKNOWN, "raj", 100), ("raj/6.jpg", UNKNOWN, UNKNOWN, 100)])
    figures = face_figures(table)
    assert (figures["actor_recall"], figures["actor_as_other_actor"], figures["actor_as_unknown"],
            figures["actor_cant_tell"]) == (0.25, 0.25, 0.25, 0.25)
    assert figures["stranger_false_accept"] == 0.5
    widths = by_width(table)
    assert list(widths) == ["under_32", "32_64", "64_128", "128_plus"]
    assert widths["under_32"]["actor_cant_tell"] == 1.0 and widths["64_128"]["actor_as_other_actor"] == 1.0
    assert widths["128_plus"]["stranger_faces"] == 0 and widths["128_plus"]["stranger_false_accept"] is None


def test_a_photo_counts_when_its_folders_actor_is_named_on_some_face() -> None:
    table = answered([
        ("howard/group.jpg", "howard", "raj", 100), ("howard/group.jpg", "raj", "howard", 100),  # swapped: counts
        ("howard/solo.jpg", "howard", UNKNOWN, 100),  # missed
        ("raj/solo.jpg", "raj", "raj", 100),
        ("raj/other.jpg", "sheldon", "sheldon", 100),  # the folder's actor is not in it: not counted
    ])
    figures = photo_figures(table)
    assert figures["photos"] == 3 and figures["photo_recall"] == round(2 / 3, 4)
    assert figures["photo_recall_howard"] == 0.5 and figures["photo_recall_raj"] == 1.0
    assert figures["photos_with_a_face"] == 4 and figures["photo_recall_any_face"] == 0.5


def test_the_headline_fits_the_shared_metric_columns() -> None:
    X, labels, photos, widths = clustered_photos()
    candidate = Candidate(Head("face_embedding", "logistic_regression", (("C", 1),)), "nearest_face")
    table = grouped_answers(candidate, X, X, labels, photos, widths, 0, SearchParams())
    summary = summarize(table)
    assert set(headline(summary)) == {"faces", "strangers", "actor_f1", "false_accept_rate", "photo_recall"}
    assert headline(summary)["faces"] == 48 and headline(summary)["strangers"] == 15
    pairs = confused_pairs(table)
    assert pairs and all(p["actor"] != p["other"] for p in pairs)
    assert [p["min_margin"] for p in pairs if p["closest_to_other"] == 0] == sorted(
        p["min_margin"] for p in pairs if p["closest_to_other"] == 0)


def test_a_blurred_face_is_answered_by_the_champions_sharpness_edges_in_the_grouped_evaluation() -> None:
    X, labels, photos, widths = clustered_photos()
    candidate = Candidate(Head("face_embedding", "logistic_regression", (("C", 1),)), "nearest_face")
    sharp = np.array([(0.2, 0.008, 0.004)[i % 3] for i in range(len(labels))])
    table = grouped_answers(candidate, X, X, labels, photos, widths, 0, SearchParams(), sharpness=sharp,
                            sharpness_edges=(0.01, 0.006))
    assert set(table[table.sharpness == 0.004].answer) == {CANT_TELL}  # too blurred for any answer
    actors = table[(table.sharpness > 0.005) & (table.label != UNKNOWN)]
    assert (actors.answer == actors.label).all()  # a name stays where names keep their promise
    strangers = table[table.label == UNKNOWN]
    assert set(strangers[strangers.sharpness == 0.008].answer) == {CANT_TELL}  # never "not one of the four"
    assert set(strangers[strangers.sharpness == 0.2].answer) == {UNKNOWN}
    assert summarize(table)["sharpness"] == {"least": 0.004, "percentile_5": 0.004}
