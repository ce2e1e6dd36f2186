"""Face detection with the Haar rule the annotations were made with, shared by training and serving."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import cv2
import numpy as np


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


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are found; the same settings are stored with the model and used when serving."""

    scale_factor: float = 1.3
    min_neighbors: int = 5
    min_eyes: int = 2
    max_side: int = 0  # downscale so the longer side is at most this before detecting; 0 = never


class FaceDetector:
    """Haar frontal-face detector confirmed by an eye detector.

    cv2.CascadeClassifier is not thread-safe, so each thread gets its own pair of cascades.
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._local = threading.local()

    def _cascades(self) -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
        if not hasattr(self._local, "face"):
            self._local.face = _load_cascade("haarcascade_frontalface_default.xml")
            self._local.eye = _load_cascade("haarcascade_eye.xml")
        return self._local.face, self._local.eye

    def detect(self, image: np.ndarray) -> list[Box]:
        """Return the face boxes of a BGR image, in its own pixel coordinates."""
        face_cascade, eye_cascade = self._cascades()
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        scale = 1.0
        if self.settings.max_side and max(gray.shape) > self.settings.max_side:
            scale = self.settings.max_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
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
