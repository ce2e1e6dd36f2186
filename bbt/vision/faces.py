"""Face detection shared by training and serving: YuNet (libfacedetection's CNN), dlib's HOG, or the Haar rule
the annotations were made with.

The annotation boxes are Haar boxes (square). YuNet's and HOG's boxes have other shapes and centres, so they are
mapped onto the Haar convention (YUNET_BOX_*, HOG_BOX_*) and match the annotations by the same IoU rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from bbt.vision.images import Photo


@dataclass(frozen=True)
class Box:
    """A face box in image pixel coordinates (top-left origin)."""

    x: int
    y: int
    w: int
    h: int

    def iou(self, other: Box) -> float:
        """Intersection over union of two boxes."""
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Median Haar box vs HOG box over the 135 accepted annotations: 1.12x the side, centre 0.08 HOG side higher.
HOG_BOX_SCALE = 1.12
HOG_BOX_SHIFT = -0.08
# Median Haar box vs YuNet box over the 191 accepted faces: 1.08x the geometric mean of YuNet's width and
# height, centred 0.012 of its width left and 0.019 of its height higher.
YUNET_BOX_SCALE = 1.08
YUNET_BOX_SHIFT = (-0.012, -0.019)


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are found; stored with the model and used when serving. The one definition of these settings:
    params.yaml's `clean` section (config.CleanParams) extends it, so its defaults are the training defaults."""

    detector: str = "yunet"  # a name in DETECTORS
    yunet_side: int = 640  # yunet: downscale so the longer side is at most this before detecting; 0 = never
    min_score: float = 0.5  # yunet: the smallest face score kept
    decode_side: int = 1280  # JPEGs are decoded reduced (DCT scaling) while their longer side stays >= this; 0 = never
    hog_side: int = 800  # hog: resize (up or down) so the longer side is this before detecting; 0 = never
    hog_upsample: int = 0  # hog: extra pyramid up-sampling for faces under 80 px (each one ~4x the cost)
    scale_factor: float = 1.3  # haar: the cascade's pyramid step (the annotations used 1.3)
    min_neighbors: int = 5  # haar
    min_eyes: int = 2  # haar: eyes the eye cascade must confirm in a face
    max_side: int = 0  # haar: downscale so the longer side is at most this before detecting; 0 = never

    @classmethod
    def of(cls, params: DetectorSettings) -> DetectorSettings:
        """Just the detector settings of params that extend them (config.CleanParams)."""
        return cls(**{f.name: getattr(params, f.name) for f in fields(cls)})

    @classmethod
    def from_metadata(cls, stored: dict[str, Any]) -> DetectorSettings:
        """The settings a logged model was trained with. Older models named the detector `method`, and the
        oldest stored only the Haar keys and decoded at full size: they load as they were trained."""
        stored = dict(stored)
        stored.setdefault("detector", stored.pop("method", "haar"))
        stored.setdefault("decode_side", 0)
        return cls(**stored)


class FaceDetector:
    """Haar frontal-face detector confirmed by an eye detector, or dlib's HOG frontal-face detector.

    cv2.CascadeClassifier is not thread-safe, so each thread gets its own pair of cascades (and HOG detector).
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        if self.settings.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.settings.detector!r}; choose from {list(DETECTORS)}")
        self._local = threading.local()

    def _cascades(self) -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
        if not hasattr(self._local, "face"):
            self._local.face = _load_cascade("haarcascade_frontalface_default.xml")
            self._local.eye = _load_cascade("haarcascade_eye.xml")
        return self._local.face, self._local.eye

    def _hog(self) -> Any:  # a dlib.fhog_object_detector (dlib has no type stubs)
        if not hasattr(self._local, "hog"):
            import dlib

            self._local.hog = dlib.get_frontal_face_detector()
        return self._local.hog

    def detect(self, image: np.ndarray) -> list[Box]:
        """Return the face boxes of a BGR image, in its own pixel coordinates."""
        return DETECTORS[self.settings.detector].detect(self, image)

    def detect_photo(self, photo: Photo) -> list[Box]:
        """The face boxes of a decoded photo in the photo's own pixel coordinates, left to right, top to bottom.

        Sorted, so the order does not depend on the detector's internals (OpenCV's depends on its thread count).
        """
        sx, sy = photo.scale
        boxes = [_clip(b.x / sx, b.y / sy, b.w / sx, b.h / sy, *photo.size) for b in self.detect(photo.image)]
        return sorted((b for b in boxes if b is not None), key=lambda b: (b.x, b.y, b.w, b.h))

    def _detect_yunet(self, image: np.ndarray) -> list[Box]:
        from bbt.vision.yunet import network

        height, width = image.shape[:2]
        scale = 1.0
        if self.settings.yunet_side and max(height, width) > self.settings.yunet_side:
            scale = self.settings.yunet_side / max(height, width)
            image = cv2.resize(image, _scaled_size(width, height, scale), interpolation=cv2.INTER_AREA)
        boxes = []
        for face in network()(image, self.settings.min_score):
            x, y, w, h = (v / scale for v in face.box)
            side = YUNET_BOX_SCALE * float(np.sqrt(max(w, 0) * max(h, 0)))
            cx = x + w / 2 + YUNET_BOX_SHIFT[0] * w
            cy = y + h / 2 + YUNET_BOX_SHIFT[1] * h
            box = _clip(cx - side / 2, cy - side / 2, side, side, width, height)
            if box is not None:
                boxes.append(box)
        return boxes

    def _detect_hog(self, image: np.ndarray) -> list[Box]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height, width = gray.shape
        scale = 1.0
        if self.settings.hog_side and max(gray.shape) != self.settings.hog_side:
            scale = self.settings.hog_side / max(gray.shape)
            # Small photos are enlarged too: HOG's window is 80 px, smaller faces are invisible to it.
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            gray = cv2.resize(gray, _scaled_size(width, height, scale), interpolation=interpolation)
        boxes = []
        for rect in self._hog()(gray, self.settings.hog_upsample):
            hog_side = rect.width() / scale
            side = hog_side * HOG_BOX_SCALE
            cx = (rect.left() + rect.width() / 2) / scale
            cy = (rect.top() + rect.height() / 2) / scale + HOG_BOX_SHIFT * hog_side
            box = _clip(cx - side / 2, cy - side / 2, side, side, width, height)
            if box is not None:
                boxes.append(box)
        return boxes

    def _detect_haar(self, image: np.ndarray) -> list[Box]:
        face_cascade, eye_cascade = self._cascades()
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        scale = 1.0
        if self.settings.max_side and max(gray.shape) > self.settings.max_side:
            scale = self.settings.max_side / max(gray.shape)
            gray = cv2.resize(gray, _scaled_size(gray.shape[1], gray.shape[0], scale), interpolation=cv2.INTER_AREA)
        found = face_cascade.detectMultiScale(
            gray, scaleFactor=self.settings.scale_factor, minNeighbors=self.settings.min_neighbors
        )
        boxes = []
        for x, y, w, h in found:
            if self.settings.min_eyes:
                eyes = eye_cascade.detectMultiScale(gray[y : y + h, x : x + w])
                if len(eyes) < self.settings.min_eyes:
                    continue
            boxes.append(Box(*(int(round(v / scale)) for v in (x, y, w, h))))
        return boxes


@dataclass(frozen=True)
class Detector:
    """A registered detector: how it finds boxes in a BGR image (with a FaceDetector's per-thread state), the
    code its boxes come from besides this module (clean's dvc.yaml deps, the detection cache's key), and the
    packages serving needs for it (the model's pinned requirements)."""

    detect: Callable[[FaceDetector, np.ndarray], list[Box]]
    modules: tuple[str, ...]
    packages: tuple[str, ...]


# The detectors `clean.detector` may name. Adding one is one entry here (and its settings in DetectorSettings).
DETECTORS: dict[str, Detector] = {
    "yunet": Detector(FaceDetector._detect_yunet, ("bbt/vision/yunet.py",), ("onnx", "onnxruntime", "yuface")),
    "hog": Detector(FaceDetector._detect_hog, (), ("dlib-bin",)),
    "haar": Detector(FaceDetector._detect_haar, (), ("opencv-python-headless",)),
}


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) times scale, at least one pixel each: a 1:2000 photo keeps its one-pixel side."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def _clip(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    """The part of a box inside the image, or None when too little is left to crop."""
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(width, round(x + w)), min(height, round(y + h))
    if right - left < 8 or bottom - top < 8:
        return None
    return Box(left, top, right - left, bottom - top)


def _load_cascade(filename: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + filename)
    if cascade.empty():
        raise RuntimeError(
            f"OpenCV could not load {filename} from {cv2.data.haarcascades}: "
            "reinstall opencv-python-headless<5 (5.x no longer ships the Haar cascades)"
        )
    return cascade


def crop_face(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Cut a face out of a BGR image and resize it to size x size."""
    crop = image[box.y : box.y + box.h, box.x : box.x + box.w]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def crop_photo_face(photo: Photo, box: Box, size: int) -> np.ndarray:
    """crop_face for a box in the photo's own coordinates, cut from its (possibly reduced) pixels."""
    sx, sy = photo.scale
    height, width = photo.image.shape[:2]
    left, top = min(width - 1, int(box.x * sx)), min(height - 1, int(box.y * sy))
    right, bottom = max(left + 1, round((box.x + box.w) * sx)), max(top + 1, round((box.y + box.h) * sy))
    return crop_face(photo.image, Box(left, top, min(right, width) - left, min(bottom, height) - top), size)
