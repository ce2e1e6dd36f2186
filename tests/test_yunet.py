"""YuNet rebuilt for onnxruntime: the same faces as the yuface wheel's own code, shareable, clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from bbt.errors import ModelError
from bbt.images import decode_image
from bbt.yunet import LAYERS, YuNet, library_path, load_layers
from tests.conftest import Project


def test_the_library_holds_the_known_architecture() -> None:
    layers = load_layers()
    assert len(layers) == LAYERS
    assert Counter(layer.depthwise for layer in layers) == {False: 27, True: 26}
    assert layers[0].weights.shape == (16, 32)  # the 3x3/2 head as a 1x1 over 27 (+ 5 zero) inputs
    assert not layers[0].weights[:, 27:].any()


def test_a_library_that_is_not_libfacedetection_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "libfacedetection.so"
    fake.write_bytes(b"not a shared library")
    with pytest.raises(ModelError, match=r"not the libfacedetection .* reinstall the package yuface"):
        load_layers(fake)


def photos(project: Project, count: int) -> list[np.ndarray]:
    """The first `count` dataset photos with faces in them, downscaled to at most 640 px as the detector does."""
    chosen = []
    for path in sorted((project.root / "data/raw/raj").iterdir())[:count]:
        image = decode_image(path.read_bytes())
        scale = min(1.0, 640 / max(image.shape[:2]))
        chosen.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return chosen


@pytest.mark.integration
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
