"""The pixel + wavelet transformer on generated crops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from bbt.vision.features import PixelWaveletFeatures


@pytest.fixture
def crops() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)


def test_4096_features_in_unit_range(crops: np.ndarray) -> None:
    features = PixelWaveletFeatures().fit(crops).transform(crops)
    assert features.shape == (3, 4096)
    assert features.min() >= 0.0 and features.max() <= 1.0


def test_pixels_come_first_in_bgr_order() -> None:
    crop = np.zeros((1, 64, 64, 3), np.uint8)
    crop[..., 0] = 255  # pure blue in BGR
    features = PixelWaveletFeatures().transform(crop)[0]
    assert np.allclose(features[0:3072:3], 1.0) and np.allclose(features[1:3072:3], 0.0)


def test_flat_crop_has_no_edges() -> None:
    features = PixelWaveletFeatures().transform(np.full((1, 128, 128, 3), 90, np.uint8))[0]
    assert np.allclose(features[3072:], 0.0, atol=1 / 255)


def test_stateless_and_deterministic(crops: np.ndarray) -> None:
    first = PixelWaveletFeatures().transform(crops)
    again = clone(PixelWaveletFeatures()).fit(crops[:1]).transform(crops)
    assert np.array_equal(first, again)


def test_crop_size_does_not_change_the_feature_count() -> None:
    small = np.zeros((2, 48, 48, 3), np.uint8)
    assert PixelWaveletFeatures().transform(small).shape == (2, 4096)


def test_wrong_input_shape_is_explained() -> None:
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        PixelWaveletFeatures().transform(np.zeros((2, 32, 32), np.uint8))


def test_misspelt_wavelet_fails_at_fit() -> None:
    with pytest.raises(ValueError):
        PixelWaveletFeatures(wavelet="db99x").fit(None)
