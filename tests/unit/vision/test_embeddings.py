"""The face-embedding transformer: generated crops for its contract, real faces for what it is for."""

from __future__ import annotations

import pickle
import sys
import threading

import numpy as np
import pytest
import skops.io
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from bbt.errors import ModelError
from bbt.pipeline.register import skops_trusted_types
from bbt.vision import embeddings
from bbt.vision.embeddings import EMBEDDING_SIZE, FaceEmbeddings, model_dir


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Six 128 px crops: smooth blobs with a darker 'eyes and mouth' pattern, different per crop."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:128, 0:128]
    made = []
    for _ in range(6):
        face = np.exp(-(((xx - 64) / 40.0) ** 2 + ((yy - 64) / 50.0) ** 2))
        image = (face[..., None] * rng.uniform(120, 230, 3)).astype(np.uint8)
        for cx, cy in ((44, 52), (84, 52), (64, 96)):
            image[cy - 5 : cy + 5, cx - 9 : cx + 9] //= 3
        made.append(image + rng.integers(0, 12, image.shape, dtype=np.uint8))
    return np.stack(made)


def test_each_crop_becomes_one_128_d_embedding(crops: np.ndarray) -> None:
    X = FaceEmbeddings().fit(crops).transform(crops)
    assert X.shape == (len(crops), EMBEDDING_SIZE) and X.dtype == np.float32
    assert np.isfinite(X).all()
    assert len({row.tobytes() for row in X}) == len(crops)  # different crops, different embeddings


def test_embeddings_are_deterministic_and_batch_independent(crops: np.ndarray) -> None:
    features = FaceEmbeddings()
    batch = features.transform(crops)
    np.testing.assert_array_equal(batch, features.transform(crops))
    one_by_one = np.concatenate([features.transform(crops[i : i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


def test_an_empty_batch_and_a_wrong_shape(crops: np.ndarray) -> None:
    assert FaceEmbeddings().transform(crops[:0]).shape == (0, EMBEDDING_SIZE)
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        FaceEmbeddings().transform(crops[..., 0])


def test_pickle_round_trip_carries_no_dlib_state(crops: np.ndarray) -> None:
    features = FaceEmbeddings(border=0.2)
    before = features.transform(crops)  # the dlib models are loaded now
    restored = pickle.loads(pickle.dumps(features))
    assert restored.get_params() == features.get_params()
    assert b"dlib" not in pickle.dumps(features)
    np.testing.assert_array_equal(restored.transform(crops), before)


def test_a_pipeline_with_it_survives_skops_with_the_trusted_types_register_passes(crops: np.ndarray) -> None:
    labels = np.array(["howard", "raj"] * 3)
    model = Pipeline([("features", FaceEmbeddings()),
                      ("clf", CalibratedClassifierCV(SVC(), ensemble=False, cv=3))]).fit(crops, labels)
    trusted = skops_trusted_types(model)
    assert "bbt.vision.embeddings.FaceEmbeddings" in trusted
    loaded = skops.io.loads(skops.io.dumps(model), trusted=trusted)
    np.testing.assert_array_equal(loaded.predict_proba(crops), model.predict_proba(crops))


def test_threads_share_one_transformer(crops: np.ndarray) -> None:
    features = FaceEmbeddings()
    expected = features.transform(crops)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(features.transform(crops))
        except BaseException as err:  # noqa: BLE001 - any failure in a thread fails the test
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 3
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_a_classifier_warms_the_network_up_before_its_first_photo(crops: np.ndarray,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.linear_model import LogisticRegression

    from bbt.model.openset import OpenSetClassifier
    from bbt.model.predict import ActorClassifier
    from bbt.vision.faces import DetectorSettings

    labels = np.array(["howard", "raj"] * 3)
    pipeline = Pipeline([("features", FaceEmbeddings()), ("clf", LogisticRegression())]).fit(crops, labels)
    gallery = FaceEmbeddings().transform(crops)
    model = OpenSetClassifier(pipeline, FaceEmbeddings(), "nearest_face", 0.5, gallery, labels, 0.05)
    monkeypatch.setattr(embeddings, "_resnet", None)
    classifier = ActorClassifier(model, DetectorSettings(detector="hog"), 128)
    assert embeddings._resnet is None
    classifier.warm_up()
    assert embeddings._resnet is not None


def test_model_files_are_found_without_importing_face_recognition_models(monkeypatch: pytest.MonkeyPatch) -> None:
    # The package's __init__ imports pkg_resources, which may not exist: finding and using the files must not
    # import it (checked in this process with the package forgotten, as a fresh interpreter costs ~5 s).
    for name in [n for n in sys.modules if n.split(".")[0] == embeddings.MODELS_PACKAGE]:
        monkeypatch.delitem(sys.modules, name)
    folder = model_dir()
    FaceEmbeddings().transform(np.zeros((1, 64, 64, 3), np.uint8))
    assert embeddings.MODELS_PACKAGE not in sys.modules
    assert (folder / embeddings.LANDMARKS_FILE).is_file() and (folder / embeddings.RESNET_FILE).is_file()
    assert "68" not in embeddings.LANDMARKS_FILE


def test_a_missing_model_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="face-recognition-models"):
        model_dir()
