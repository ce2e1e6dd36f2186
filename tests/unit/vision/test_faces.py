"""Boxes, crops and the Haar detector on generated images."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.vision.faces import Box, FaceDetector, crop_face


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (Box(0, 0, 10, 10), Box(0, 0, 10, 10), 1.0),
        (Box(0, 0, 10, 10), Box(20, 20, 5, 5), 0.0),
        (Box(0, 0, 10, 10), Box(5, 0, 10, 10), 50 / 150),
    ],
)
def test_iou(a: Box, b: Box, expected: float) -> None:
    assert a.iou(b) == pytest.approx(expected)
    assert b.iou(a) == pytest.approx(expected)


def test_crop_is_resized_to_a_square() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:60, 20:70] = 255
    crop = crop_face(image, Box(20, 10, 50, 50), 32)
    assert crop.shape == (32, 32, 3) and crop.min() == 255


def test_blank_image_has_no_face() -> None:
    assert FaceDetector().detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_a_box_in_photo_pixels_is_cut_from_the_reduced_pixels() -> None:
    from bbt.vision.faces import crop_photo_face
    from bbt.vision.images import Photo

    rng = np.random.default_rng(1)
    reduced = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    photo = Photo(reduced, (300, 200))  # decoded at half size
    assert np.array_equal(crop_photo_face(photo, Box(60, 40, 80, 80), 32), crop_face(reduced, Box(30, 20, 40, 40), 32))
    full = Photo(reduced, (150, 100))
    assert np.array_equal(crop_photo_face(full, Box(30, 20, 41, 41), 32), crop_face(reduced, Box(30, 20, 41, 41), 32))
    edge = crop_photo_face(photo, Box(298, 198, 2, 2), 32)  # one reduced pixel, not an empty crop
    assert edge.shape == (32, 32, 3)
