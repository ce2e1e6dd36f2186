"""Stand-ins for the served model inside photo processes (bbt.serving.sandbox_process.load_work): the decode
is the real one, the classification is a fixed face or a CPU-bound loop, so the tests need no trained model."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from bbt.model.face_prediction import FacePrediction
from bbt.vision.faces import Box
from bbt.vision.images import Photo

SPIN_FROM_WIDTH = 100


class OneFace:
    """Answers one face covering the photo's top-left quarter; `spin_s` of CPU first (a slow stage) for photos
    wider than SPIN_FROM_WIDTH, so not for the warm-up's small blank photo."""

    decode_side = 1280

    def __init__(self, spin_s: float = 0.0) -> None:
        self.spin_s = spin_s

    def classify(self, photo: Photo, timed: Callable[[str], AbstractContextManager[Any]]) -> list[FacePrediction]:
        with timed("detect"):
            end = time.process_time() + (self.spin_s if photo.size[0] > SPIN_FROM_WIDTH else 0)
            while time.process_time() < end:
                pass
        width, height = photo.size
        return [FacePrediction(Box(0, 0, width // 2, height // 2), "raj", "raj", 0.9,
                               {"howard": 0.05, "leonard": 0.03, "raj": 0.9, "sheldon": 0.02}, 0.3, 0.5)]


def one_face(spin_s: str) -> OneFace:
    return OneFace(float(spin_s or 0))
