"""The open-set rule, its learned threshold, and a search whose result depends on nothing but its inputs."""

from __future__ import annotations

import hashlib
import io

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from bbt import CANT_TELL, UNKNOWN
from bbt.config import SearchParams
from bbt.model.candidates import Candidate, Head
from bbt.model.openset import (
    OpenSetClassifier,
    learn_band,
    learn_threshold,
    nearest_face_distance,
    open_set_labels,
    open_set_scores,
)
from bbt.model.photo_folds import photo_folds
from bbt.pipeline.search import out_of_fold, ranking_key, score_rule

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")


def test_nearest_face_distance_is_to_the_predicted_actors_own_faces() -> None:
    gallery = np.array([[0.0, 0.0], [10.0, 0.0]])
    labels = np.array([0, 1])
    faces = np.array([[1.0, 0.0], [1.0, 0.0]])
    distances = nearest_face_distance(faces, None, np.array([0, 1]), gallery, labels)
    assert distances.tolist() == [1.0, 9.0]


def test_the_threshold_keeps_false_accepts_within_the_target_and_sits_in_the_gap() -> None:
    labels = np.array(["howard"] * 4 + [UNKNOWN] * 4, dtype=object)
    closest = np.array(["howard"] * 8, dtype=object)
    distances = np.array([0.2, 0.3, 0.35, 0.4, 0.7, 0.8, 0.9, 1.0])
    threshold = learn_threshold(labels, closest, distances, target_false_accept=0.0)
    assert 0.4 < threshold < 0.7
    answers = open_set_labels(closest, distances, threshold)
    assert list(answers) == ["howard"] * 4 + [UNKNOWN] * 4


def test_a_stranger_among_the_actors_costs_more_than_an_actor_left_out() -> None:
    """The one actor face past a stranger is given up: f0.5 weighs a false match over a miss."""
    labels = np.array(["howard"] * 9 + [UNKNOWN] + ["howard"] + [UNKNOWN] * 5, dtype=object)
    closest = np.array(["howard"] * 16, dtype=object)
    distances = np.array([0.1, 0.15, 0.2, 0.22, 0.25, 0.3, 0.32, 0.35, 0.4, 0.55, 0.56, 0.7, 0.8, 0.9, 0.95, 1.0])
    threshold = learn_threshold(labels, closest, distances, 0.5, "open_set_f05")
    assert 0.4 < threshold < 0.55


def test_open_set_scores_count_unknown_as_wrong_for_actors_and_right_for_strangers() -> None:
    labels = np.array(["raj", "raj", "sheldon", UNKNOWN, UNKNOWN], dtype=object)
    answers = np.array(["raj", UNKNOWN, "sheldon", UNKNOWN, "raj"], dtype=object)
    scores = open_set_scores(labels, answers)
    assert scores["actor_accuracy"] == pytest.approx(2 / 3)
    assert scores["false_accept_rate"] == 0.5
    assert scores["open_set_f1"] < scores["actor_f1"]  # the stranger named Raj is a false match


def clusters(per_actor: int = 10, strangers: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(len(ACTORS), 8))
    X = np.concatenate([c + rng.normal(0, 0.3, size=(per_actor, 8)) for c in centres]
                       + [rng.normal(0, 3, size=(strangers, 8)) + 12])
    y = np.array([*np.repeat(ACTORS, per_actor), *[UNKNOWN] * strangers], dtype=object)
    return X, y


def assembled(X: np.ndarray, y: np.ndarray, threshold: float, *rules: float) -> OpenSetClassifier:
    """An OpenSetClassifier over the generated clusters (identity features), as the search refits one; `rules`:
    min_face_width, band_low, band_high."""
    actors = y != UNKNOWN
    head = Head("face_embedding", "logistic_regression", (("C", 1),)).head(0).fit(X[actors], y[actors].astype(str))
    identity = FunctionTransformer()
    return OpenSetClassifier(Pipeline([("features", identity), *head.steps]), identity, "nearest_face", threshold,
                             X[actors], y[actors].astype(str), 0.05, *rules)


def test_an_assembled_model_names_actors_and_refuses_strangers() -> None:
    X, y = clusters()
    actors = y != UNKNOWN
    model = assembled(X, y, 2.0)
    answers = model.predict(X)
    assert list(answers[actors]) == list(y[actors])
    assert set(answers[~actors]) == {UNKNOWN}
    assert model.predict_proba(X[:2]).shape == (2, 4)


def test_the_search_result_is_the_same_bytes_whatever_the_timing() -> None:
    """Cross-validation, the threshold and the refitted model's bytes depend on the inputs only."""
    X, y = clusters()
    actors = np.flatnonzero(y != UNKNOWN)
    folds = photo_folds(y, np.array([f"photo {i // 2}" for i in range(len(y))], dtype=object), 3, 0)
    head = Head("face_embedding", "svm", (("C", 1), ("kernel", "rbf")))
    runs = [out_of_fold(head, X, X, y, folds, 0, ("nearest_face",)) for _ in range(2)]
    scored = [score_rule(y, r["answers"]["nearest_face"], r["distances"]["nearest_face"], 0.05, "open_set_f05")
              for r in runs]
    assert scored[0] == scored[1]
    dumps = []
    for _ in range(2):
        buffer = io.BytesIO()
        joblib.dump(head.head(0).fit(X[actors], y[actors].astype(str)), buffer)
        dumps.append(hashlib.md5(buffer.getvalue()).hexdigest())
    assert dumps[0] == dumps[1]


def test_ties_go_to_the_simpler_candidate_never_to_a_timing() -> None:
    tied = {"cv_open_set_f05": 1.0, "cv_false_accept_rate": 0.0}
    candidates = [
        Candidate(Head("pixel_wavelet", "logistic_regression", (("C", 1),)), "nearest_face"),
        Candidate(Head("face_embedding", "random_forest", (("n_estimators", 10),)), "nearest_face"),
        Candidate(Head("face_embedding", "svm", (("C", 10), ("kernel", "rbf"))), "nearest_face"),
        Candidate(Head("face_embedding", "svm", (("C", 1), ("kernel", "linear"))), "probability"),
        Candidate(Head("face_embedding", "logistic_regression", (("C", 5),)), "nearest_face"),
        Candidate(Head("face_embedding", "logistic_regression", (("C", 1),)), "probability"),
        Candidate(Head("face_embedding", "logistic_regression", (("C", 1),)), "nearest_face"),
    ]
    objective = SearchParams().objective
    ranked = sorted(candidates, key=lambda c: ranking_key(tied, objective, c))
    assert [c.name for c in ranked] == [
        "face_embedding/logistic_regression(C=1)+nearest_face",
        "face_embedding/logistic_regression(C=1)+probability",
        "face_embedding/logistic_regression(C=5)+nearest_face",
        "face_embedding/svm(C=1,kernel=linear)+probability",
        "face_embedding/svm(C=10,kernel=rbf)+nearest_face",
        "face_embedding/random_forest(n_estimators=10)+nearest_face",
        "pixel_wavelet/logistic_regression(C=1)+nearest_face",
    ]
    better = {"cv_open_set_f05": 1.0, "cv_false_accept_rate": 0.0}
    worse = {"cv_open_set_f05": 0.99, "cv_false_accept_rate": 0.0}
    assert ranking_key(better, objective, candidates[0]) < ranking_key(worse, objective, candidates[-1])


def overlapping() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actors named right up to 0.59, strangers from 0.55: they overlap between 0.55 and 0.59."""
    labels = np.array(["howard"] * 8 + [UNKNOWN, "howard", UNKNOWN, "howard"] + [UNKNOWN] * 6, dtype=object)
    distances = np.array([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.48, 0.5, 0.55, 0.56, 0.58, 0.59,
                          0.62, 0.7, 0.75, 0.8, 0.9, 1.0])
    return labels, np.array(["howard"] * len(labels), dtype=object), distances


def test_the_band_covers_where_actors_and_strangers_overlap_and_no_further() -> None:
    labels, closest, distances = overlapping()
    threshold = learn_threshold(labels, closest, distances, target_false_accept=0.0)
    assert 0.5 < threshold < 0.55
    low, high = learn_band(labels, closest, distances, threshold, precision=0.9)
    assert low == threshold and 0.59 < high < 0.62
    inside = (distances > low) & (distances <= high)
    assert list(distances[inside]) == [0.55, 0.56, 0.58, 0.59]
    # The answers outside the band keep their promise: every face named is an actor, every other a stranger.
    assert (labels[distances <= low] == "howard").all() and (labels[distances > high] == UNKNOWN).all()


def test_no_band_where_actors_and_strangers_are_apart() -> None:
    labels = np.array(["howard"] * 5 + [UNKNOWN] * 5, dtype=object)
    distances = np.array([0.2, 0.3, 0.35, 0.4, 0.45, 0.6, 0.7, 0.8, 0.9, 1.0])
    closest = np.array(["howard"] * 10, dtype=object)
    threshold = learn_threshold(labels, closest, distances, 0.0)
    assert learn_band(labels, closest, distances, threshold, 0.9) == (threshold, threshold)


def test_a_band_where_one_answer_is_right_often_enough_is_not_taken() -> None:
    """Nine strangers and one actor past the threshold: "not one of the four" is right 0.9 of the time there."""
    labels = np.array(["howard"] * 5 + [UNKNOWN] * 4 + ["howard"] + [UNKNOWN] * 5, dtype=object)
    distances = np.array([0.2, 0.3, 0.35, 0.4, 0.45, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.7, 0.8, 0.9, 1.0])
    closest = np.array(["howard"] * len(labels), dtype=object)
    low, high = learn_band(labels, closest, distances, 0.5, precision=0.8)
    assert (low, high) == (0.5, 0.5)
    low, high = learn_band(labels, closest, distances, 0.5, precision=0.9)
    assert low == 0.5 and 0.64 < high < 0.65


def test_the_band_and_the_width_travel_inside_the_model() -> None:
    """Saved and loaded like the registered model: a face in the band, or too narrow, is "can't tell"."""
    X, y = clusters()
    actors = y != UNKNOWN
    model = assembled(X, y, 0.5, 28, 0.5, 2.0)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    assert loaded.band == (0.5, 2.0) and loaded.describe()["band"] == [0.5, 2.0]
    probe = X[actors][:3] + np.array([[0.0] * 8, [1.2] + [0.0] * 7, [5.0] + [0.0] * 7])
    decisions = loaded.decide(probe, widths=np.array([100, 100, 100]))
    d = decisions.distances
    assert d[0] == 0.0 and 0.5 < d[1] <= 2.0 and d[2] > 2.0
    assert list(decisions.labels) == [y[actors][0], CANT_TELL, UNKNOWN]
    assert not decisions.too_small.any()
    small = loaded.decide(probe[:1], widths=np.array([20]))
    assert list(small.labels) == [CANT_TELL] and small.too_small.all()


def test_a_model_of_before_without_a_band_answers_as_it_did() -> None:
    X, y = clusters()
    actors = y != UNKNOWN
    head = Head("face_embedding", "logistic_regression", (("C", 1),)).head(0).fit(X[actors], y[actors].astype(str))
    identity = FunctionTransformer()
    model = OpenSetClassifier(Pipeline([("features", identity), *head.steps]), identity, "nearest_face", 2.0,
                              X[actors], y[actors].astype(str), 0.05)
    del model.band_low, model.band_high  # as unpickled from a model saved before the band existed
    assert model.band == (2.0, 2.0)
    assert CANT_TELL not in set(model.predict(X))
