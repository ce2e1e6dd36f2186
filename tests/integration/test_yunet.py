"""YuNet rebuilt for onnxruntime on real photos: the same faces as the yuface wheel's own code."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bbt.vision.images import decode_image
from bbt.vision.yunet import YuNet, library_path
from tests.conftest import Project

pytestmark = pytest.mark.integration


def photos(project: Project, count: int) -> list[np.ndarray]:
    """The first `count` dataset photos with faces in them, downscaled to at most 640 px as the detector does."""
    chosen = []
    for path in sorted((project.root / "data/raw/raj").iterdir())[:count]:
        image = decode_image(path.read_bytes())
        scale = min(1.0, 640 / max(image.shape[:2]))
        chosen.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return chosen


def test_the_onnx_network_finds_the_faces_the_wheel_finds(pulled_project: Project) -> None:
    import yuface

    network = YuNet(library_path())
    faces = 0
    for image in photos(pulled_project, 12):
        scores, boxes, _ = yuface.detect(image, conf=0.6)  # clear of the 0.5 cut, where rounding decides
        ours = network(image, min_score=0.6)
        assert len(ours) == len(scores)
        for face, score, box in zip(ours, scores, boxes):
            # The wheel truncates its boxes to integers and its scores to hundredths.
            assert abs(face.score * 100 - score) <= 1
            assert np.abs(np.array(face.box) - box).max() <= 1
        faces += len(ours)
    assert faces >= 12
