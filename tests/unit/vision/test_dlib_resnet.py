"""dlib's face-recognition ResNet rebuilt for onnxruntime: the same descriptors as dlib itself, clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bbt.errors import ModelError
from bbt.vision.dlib_resnet import CHIP_SIZE, EMBEDDING_SIZE, FaceResNet, load_layers
from bbt.vision.embeddings import RESNET_FILE, model_dir

TOLERANCE = 1e-5  # measured: ~4e-7 on faces, ~2e-6 on noise


def dlib_descriptors(chips: np.ndarray) -> np.ndarray:
    import dlib

    net = dlib.face_recognition_model_v1(str(model_dir() / RESNET_FILE))
    return np.array([np.asarray(v) for v in net.compute_face_descriptor(list(chips), num_jitters=0)])


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Noise, flat black and white, and smooth gradients: inputs that exercise every channel and border."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (3, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    flat = np.stack([np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8), np.full((CHIP_SIZE, CHIP_SIZE, 3), 255, np.uint8)])
    ramp = np.linspace(0, 255, CHIP_SIZE, dtype=np.float32)
    gradient = np.stack([ramp[None, :].repeat(CHIP_SIZE, 0), ramp[:, None].repeat(CHIP_SIZE, 1),
                         ramp[::-1][None, :].repeat(CHIP_SIZE, 0)], axis=-1).astype(np.uint8)[None]
    return np.concatenate([noise, flat, gradient])


def test_the_file_parses_into_the_known_architecture() -> None:
    layers = load_layers(model_dir() / RESNET_FILE)
    counts = Counter(layer["type"] for layer in layers)
    assert counts["con"] == 29 and counts["affine"] == 29 and counts["add_prev"] == 14
    np.testing.assert_allclose(layers[0]["mean_rgb"], [122.782, 117.001, 104.298], rtol=1e-6)
    assert layers[-1]["type"] == "fc" and layers[-1]["weight"].shape == (256, EMBEDDING_SIZE)


def test_descriptors_match_dlib_batched_and_one_by_one(chips: np.ndarray) -> None:
    expected = dlib_descriptors(chips)
    network = FaceResNet(model_dir() / RESNET_FILE)
    batched = network(chips)
    one_by_one = np.concatenate([network(chips[i:i + 1]) for i in range(len(chips))])
    assert batched.shape == (len(chips), EMBEDDING_SIZE) and batched.dtype == np.float32
    assert np.abs(batched - expected).max() < TOLERANCE
    assert np.abs(one_by_one - expected).max() < TOLERANCE


def test_a_damaged_model_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    original = (model_dir() / RESNET_FILE).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(ModelError, match=r"truncated.dat is not dlib's face-recognition ResNet .*end of file"):
        load_layers(truncated)
    other = tmp_path / "landmarks.dat"
    other.write_bytes((model_dir() / "shape_predictor_5_face_landmarks.dat").read_bytes())
    with pytest.raises(ModelError, match="reinstall the package face-recognition-models"):
        load_layers(other)


def test_wrong_chip_shapes_are_refused(chips: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(n, 150, 150, 3\)"):
        FaceResNet(model_dir() / RESNET_FILE)(chips[:, :100])
