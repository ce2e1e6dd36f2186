"""Which faces the model judges: the width and sharpness rules, learned from shrunk and blurred faces, inside the
model, and their answers."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from bbt import CANT_TELL, UNKNOWN
from bbt.model.candidates import Head
from bbt.model.openset import OpenSetClassifier, open_set_scores
from bbt.model.predict import ActorClassifier
from bbt.model.quality import (
    MIN_BIN_ACTORS,
    SharpnessScores,
    WidthScores,
    blur,
    blurred_cant_tell,
    least_judged_sharpness,
    sharpness,
    sharpness_scores,
    shrink,
    smallest_judged_width,
    width_scores,
)
from bbt.vision.faces import Box, DetectorSettings
from bbt.vision.images import Photo
from tests.unit.model.test_openset import clusters


def test_a_shrunk_crop_keeps_its_size_and_loses_its_detail() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    shrunk = shrink(crops, 8)
    assert shrunk.shape == crops.shape and shrunk.dtype == np.uint8
    # Noise averages out over 8x8 blocks: far less spread than the original.
    assert shrunk.std() < crops.std() / 3
    assert np.array_equal(shrink(crops, 8), shrunk)


@pytest.mark.parametrize(("recalls", "misnamed", "expected"), [
    ({12: 0.0, 16: 0.3, 20: 0.6, 24: 0.85, 28: 0.92, 32: 0.95}, {}, 28),  # 0.92 >= 0.9 x 0.99
    ({12: 0.0, 16: 0.3, 20: 0.95, 24: 0.5, 28: 0.95, 32: 0.95}, {}, 28),  # a dip at 24 px: not from 20
    ({12: 0.0, 16: 0.95, 20: 0.95, 24: 0.95, 28: 0.95, 32: 0.95}, {24: 0.1}, 28),  # misnamed at 24 px
    ({12: 0.0, 16: 0.1, 20: 0.1, 24: 0.1, 28: 0.1, 32: 0.5}, {}, 33),  # none keeps it: only larger faces
])
def test_the_smallest_judged_width_keeps_its_promise_at_every_larger_width(
        recalls: dict[int, float], misnamed: dict[int, float], expected: int) -> None:
    scores = [WidthScores(w, r, misnamed.get(w, 0.0), 0.0) for w, r in recalls.items()]
    assert smallest_judged_width(scores, full_recall=0.99, min_width_recall=0.9, target_false_accept=0.05) == expected


def test_width_scores_tell_a_miss_from_a_wrong_name() -> None:
    labels = np.array(["raj", "raj", "raj", "howard", UNKNOWN, UNKNOWN], dtype=object)
    answers = np.array(["raj", UNKNOWN, "sheldon", "howard", UNKNOWN, "raj"], dtype=object)
    assert width_scores(20, labels, answers) == WidthScores(20, 0.5, 0.25, 0.5)


def model(min_face_width: int, features: FunctionTransformer | None = None,
          ) -> tuple[OpenSetClassifier, np.ndarray, np.ndarray]:
    """A fitted open-set model on generated 8-d faces; `features` maps its input to them (default: as given)."""
    X, y = clusters()
    actors = y != UNKNOWN
    head = Head("face_embedding", "logistic_regression", (("C", 1),)).head(0).fit(X[actors], y[actors].astype(str))
    features = features or FunctionTransformer()
    return (OpenSetClassifier(Pipeline([("features", features), *head.steps]), features, "nearest_face", 2.0,
                              X[actors], y[actors].astype(str), 0.05, min_face_width), X, y)


def test_the_width_travels_inside_the_model_and_only_narrower_faces_are_cant_tell() -> None:
    trained, X, y = model(28)
    stored = io.BytesIO()
    joblib.dump(trained, stored)
    stored.seek(0)
    loaded = joblib.load(stored)
    assert loaded.min_face_width == 28 and loaded.describe()["min_face_width"] == 28
    widths = np.where(np.arange(len(X)) % 2 == 0, 20, 28)
    answers = loaded.decide(X, widths=widths).labels
    assert set(answers[widths == 20]) == {CANT_TELL}
    actors = (y != UNKNOWN) & (widths == 28)
    assert list(answers[actors]) == list(y[actors])
    assert list(loaded.decide(X).labels[y != UNKNOWN]) == list(y[y != UNKNOWN])  # no widths: every face judged


def test_cant_tell_is_never_a_name() -> None:
    labels = np.array(["raj", UNKNOWN, UNKNOWN], dtype=object)
    scores = open_set_scores(labels, np.array([CANT_TELL, CANT_TELL, UNKNOWN], dtype=object))
    assert scores["false_accept_rate"] == 0.0 and scores["actor_accuracy"] == 0.0


def first_pixels(crops: np.ndarray) -> np.ndarray:
    return crops.reshape(len(crops), -1)[:, :8].astype(float)


def test_a_face_too_small_is_answered_cant_tell_with_its_reason() -> None:
    trained, _, _ = model(28, FunctionTransformer(first_pixels))
    classifier = ActorClassifier(trained, DetectorSettings(detector="haar"), 8)
    photo = Photo(np.zeros((100, 100, 3), np.uint8), (100, 100))
    small, large = Box(0, 0, 20, 20), Box(40, 40, 40, 40)
    answers = {face.box: face for face in classifier.answer_boxes(photo, [small, large])}
    assert answers[small].label == CANT_TELL
    assert answers[small].reason.startswith("face 20 px wide: the model judges faces from 28 px")
    assert answers[large].label != CANT_TELL and answers[large].reason == ""
    assert classifier.answer_boxes(photo, [small, large])[-1].label == CANT_TELL  # listed last
    assert answers[small].as_dict()["reason"] == answers[small].reason


def edges_face(size: int = 128, seed: int = 0) -> np.ndarray:
    """A generated 'face': a grey ellipse with dark eyes and mouth on a textured background."""
    import cv2

    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, size=(size, size, 3), dtype=np.uint8)
    cv2.ellipse(image, (size // 2, size // 2), (size // 3, size // 2 - 8), 0, 0, 360, (200, 170, 150), -1)
    for x in (size // 3, 2 * size // 3):
        cv2.circle(image, (x, size // 2 - 10), 6, (20, 20, 20), -1)
    cv2.line(image, (size // 3, 3 * size // 4), (2 * size // 3, 3 * size // 4), (30, 20, 20), 3)
    return image


def test_blurring_a_face_lowers_its_sharpness_and_its_contrast_does_not_count() -> None:
    face = edges_face()[None]
    measured = [float(sharpness(blur(face, sigma))[0]) for sigma in (0, 1, 2, 4)]
    assert measured == sorted(measured, reverse=True) and measured[-1] < measured[0] / 10
    dim = (face.astype(np.float32) * 0.5).astype(np.uint8)  # the same face, half the contrast
    assert sharpness(dim)[0] == pytest.approx(sharpness(face)[0], rel=0.1)
    assert np.array_equal(blur(face, 0), face)


def test_sharpness_bins_pool_answers_by_measured_sharpness_sharpest_first() -> None:
    n = MIN_BIN_ACTORS
    sharp = np.array([0.5] * n + [0.09] * n + [0.045] * n + [0.5] * 4)
    labels = np.array(["raj"] * (3 * n) + [UNKNOWN] * 4, dtype=object)
    answers = np.array(["raj"] * n + ["raj"] * (n - 3) + [UNKNOWN] * 3 + ["raj"] * (n // 2) + ["howard"] * (n // 2)
                       + [UNKNOWN, UNKNOWN, UNKNOWN, "raj"], dtype=object)
    bins = sharpness_scores(sharp, labels, answers)
    assert [b.low for b in bins] == [0.4, 0.08, 0.04]  # the bins between hold too few faces: pooled downward
    assert [b.actor_faces for b in bins] == [n, n, n]
    assert bins[0].stranger_faces == 4 and bins[0].false_accept_from_here == 0.25
    assert bins[1].actor_recall == pytest.approx(0.9) and bins[1].misnamed_from_here == 0.0
    assert bins[2].misnamed_from_here == pytest.approx((n // 2) / (3 * n))


@pytest.mark.parametrize(("recalls", "precisions", "misnamed", "expected"), [
    ({0.03: 0.99, 0.01: 0.95, 0.006: 0.92, 0.004: 0.7}, {}, {}, (0.006, 0.004)),
    ({0.03: 0.99, 0.01: 0.5, 0.006: 0.95, 0.004: 0.95}, {}, {}, (0.03, 0.004)),  # a dip: no "unknown" below it
    ({0.03: 0.99, 0.01: 0.95, 0.006: 0.95, 0.004: 0.95}, {0.006: 0.8}, {}, (0.004, 0.01)),  # names wrong at 0.006
    ({0.03: 0.99, 0.01: 0.95, 0.006: 0.95, 0.004: 0.95}, {}, {0.004: 0.1}, (0.006, 0.006)),  # misnamed from 0.004
    ({0.03: 0.5, 0.01: 0.95}, {}, {}, (0.03, 0.01)),  # not even the sharpest: "unknown" only above the top bin
])
def test_the_two_sharpness_edges_keep_their_promises_in_every_sharper_bin(
        recalls: dict[float, float], precisions: dict[float, float], misnamed: dict[float, float],
        expected: tuple[float, float]) -> None:
    bins = [SharpnessScores(low, np.inf, 40, 10, r, misnamed.get(low, 0.0), 0.0, precisions.get(low, 1.0))
            for low, r in recalls.items()]
    judged, named = least_judged_sharpness(bins, full_recall=0.99, min_width_recall=0.9, band_precision=0.9,
                                           target_false_accept=0.05)
    assert (judged, named) == (expected[0], min(expected))


def test_under_the_edges_a_blurred_face_keeps_its_name_but_is_never_called_a_stranger() -> None:
    answers = np.array(["raj", UNKNOWN, "raj", UNKNOWN, "raj", UNKNOWN], dtype=object)
    sharp = np.array([0.5, 0.5, 0.008, 0.008, 0.004, 0.004])
    assert list(blurred_cant_tell(answers, sharp, 0.01, 0.006)) == [False, False, False, True, True, True]


def test_the_sharpness_travels_inside_the_model_and_only_blurred_faces_are_cant_tell() -> None:
    trained, X, y = model(0)
    trained.set_params(min_sharpness=0.01, min_sharpness_named=0.006)
    stored = io.BytesIO()
    joblib.dump(trained, stored)
    stored.seek(0)
    loaded = joblib.load(stored)
    assert (loaded.describe()["min_sharpness"], loaded.describe()["min_sharpness_named"]) == (0.01, 0.006)
    sharp = np.array([(0.2, 0.008, 0.004)[i % 3] for i in range(len(X))])
    decisions = loaded.decide(X, sharpness=sharp)
    actors, strangers = y != UNKNOWN, y == UNKNOWN
    assert set(decisions.labels[sharp == 0.004]) == {CANT_TELL}  # too blurred for any answer
    assert list(decisions.labels[actors & (sharp > 0.005)]) == list(y[actors & (sharp > 0.005)])  # names stay
    assert set(decisions.labels[strangers & (sharp == 0.008)]) == {CANT_TELL}  # never called a stranger
    assert set(decisions.labels[strangers & (sharp == 0.2)]) == {UNKNOWN}
    assert decisions.blurred.sum() == (sharp == 0.004).sum() + (strangers & (sharp == 0.008)).sum()
    old = joblib.load(io.BytesIO(stored.getvalue()))
    del old.min_sharpness, old.min_sharpness_named  # a model pickled before the sharpness rule: every face judged
    assert list(old.decide(X, sharpness=sharp).labels[actors]) == list(y[actors])


def test_a_blurred_face_is_answered_cant_tell_with_its_reason() -> None:
    trained, _, _ = model(0, FunctionTransformer(first_pixels))
    trained.set_params(min_sharpness=0.2, min_sharpness_named=0.08)
    classifier = ActorClassifier(trained, DetectorSettings(detector="haar"), 128)
    sharp_photo = np.zeros((200, 200, 3), np.uint8)
    sharp_photo[:128, :128] = edges_face()
    blurred_photo = blur(sharp_photo[None], 6)[0]
    box = Box(0, 0, 128, 128)
    crisp = classifier.answer_boxes(Photo(sharp_photo, (200, 200)), [box])[0]
    soft = classifier.answer_boxes(Photo(blurred_photo, (200, 200)), [box])[0]
    assert "blurred" not in crisp.reason
    assert soft.label == CANT_TELL
    assert soft.reason.startswith("face too blurred: sharpness 0.0") and "judges faces from 0.0800" in soft.reason
    trained.set_params(min_sharpness=0.2, min_sharpness_named=0.0)  # names from any sharpness: only no stranger
    soft = classifier.answer_boxes(Photo(blurred_photo, (200, 200)), [box])[0]
    # The generated face is no one ("not one of the four" with no blur rule): too blurred to say so.
    assert soft.label == CANT_TELL
    assert soft.reason.startswith("face too blurred to rule out the known people: sharpness 0.0")
    assert "\"not one of them\" from 0.2000" in soft.reason
    trained.set_params(min_sharpness=0.0)
    assert classifier.answer_boxes(Photo(blurred_photo, (200, 200)), [box])[0].label == UNKNOWN
