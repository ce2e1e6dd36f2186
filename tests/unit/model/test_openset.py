"""The open-set rule, its learned threshold, and a search whose result depends on nothing but its inputs."""

from __future__ import annotations

import hashlib
import io

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from bbt import UNKNOWN
from bbt.config import SearchParams
from bbt.model.candidates import Candidate, Head
from bbt.model.openset import (
    OpenSetClassifier,
    learn_threshold,
    nearest_face_distance,
    open_set_labels,
    open_set_scores,
)
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


def test_an_assembled_model_names_actors_and_refuses_strangers() -> None:
    X, y = clusters()
    actors = y != UNKNOWN
    head = Head("face_embedding", "logistic_regression", (("C", 1),)).head(0).fit(X[actors], y[actors].astype(str))
    identity = FunctionTransformer()
    model = OpenSetClassifier(Pipeline([("features", identity), *head.steps]), identity, "nearest_face", 2.0,
                              X[actors], y[actors].astype(str), 0.05)
    answers = model.predict(X)
    assert list(answers[actors]) == list(y[actors])
    assert set(answers[~actors]) == {UNKNOWN}
    assert model.predict_proba(X[:2]).shape == (2, 4)


def test_the_search_result_is_the_same_bytes_whatever_the_timing() -> None:
    """Cross-validation, the threshold and the refitted model's bytes depend on the inputs only."""
    X, y = clusters()
    actors = np.flatnonzero(y != UNKNOWN)
    from sklearn.model_selection import StratifiedKFold

    folds = [(actors[a], actors[b]) for a, b in StratifiedKFold(3, shuffle=True, random_state=0)
             .split(actors, y[actors])]
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
