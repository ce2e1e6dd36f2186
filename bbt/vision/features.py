"""The original system's features as a scikit-learn transformer: 32x32 pixels + wavelet edges."""

from __future__ import annotations

import cv2
import numpy as np
import pywt
from sklearn.base import BaseEstimator, TransformerMixin


class PixelWaveletFeatures(TransformerMixin, BaseEstimator):
    """Map face crops (n, s, s, 3) BGR uint8 to (n, 4 * size * size) features in [0, 1].

    Per crop: the size x size BGR pixels, stacked with the size x size image of a wavelet transform
    of the grayscale crop whose approximation band is zeroed (its edges). Stateless: fit learns nothing.
    """

    def __init__(self, wavelet: str = "db1", level: int = 5, size: int = 32) -> None:
        self.wavelet = wavelet
        self.level = level
        self.size = size

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> PixelWaveletFeatures:
        pywt.Wavelet(self.wavelet)  # fail early on a misspelt wavelet name
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        crops = np.asarray(X)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected face crops of shape (n, h, w, 3), got {crops.shape}")
        return np.stack([self._features(crop) for crop in crops]).astype(np.float32)

    def _features(self, crop: np.ndarray) -> np.ndarray:
        pixels = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        edges = cv2.resize(self._wavelet_edges(crop), (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.concatenate([pixels.reshape(-1), edges.reshape(-1)]) / 255.0

    def _wavelet_edges(self, crop: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        coeffs = pywt.wavedec2(gray, self.wavelet, level=self.level)
        coeffs[0] = np.zeros_like(coeffs[0])
        edges = pywt.waverec2(coeffs, self.wavelet)[: gray.shape[0], : gray.shape[1]]
        # The original cast with np.uint8 and wrapped negatives around; clipping keeps the scale honest.
        return (edges * 255.0).clip(0, 255).astype(np.float32)

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
