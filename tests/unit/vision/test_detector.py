"""The detectors: settings on generated images, and recall against the accepted annotations on real data."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from bbt.config import CleanParams
from bbt.pipeline.clean import summarize
from bbt.vision.faces import DetectorSettings, FaceDetector, _clip

HOG = DetectorSettings(detector="hog")
YUNET = DetectorSettings(detector="yunet")


def test_older_models_load_with_the_settings_they_were_trained_with() -> None:
    # The oldest models stored only the Haar keys and decoded at full size; later ones named the detector
    # `method`. Today's store every field.
    haar = DetectorSettings.from_metadata({"scale_factor": 1.3, "min_neighbors": 5, "min_eyes": 2, "max_side": 0})
    assert (haar.detector, haar.decode_side) == ("haar", 0)
    hog = DetectorSettings.from_metadata({"method": "hog", "hog_side": 800, "decode_side": 1280})
    assert (hog.detector, hog.decode_side) == ("hog", 1280)
    assert DetectorSettings.from_metadata(asdict(YUNET)) == YUNET


def test_params_choose_the_detector_with_the_same_defaults() -> None:
    assert DetectorSettings.of(CleanParams()) == DetectorSettings()
    assert DetectorSettings.of(CleanParams(detector="hog", hog_side=640)) == DetectorSettings(detector="hog",
                                                                                               hog_side=640)
    chosen = DetectorSettings.of(CleanParams(detector="yunet", yunet_side=480, min_score=0.6, decode_side=960))
    assert (chosen.detector, chosen.yunet_side, chosen.min_score, chosen.decode_side) == ("yunet", 480, 0.6, 960)


def test_an_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown detector 'cnn'"):
        FaceDetector(DetectorSettings(detector="cnn"))


@pytest.mark.parametrize("settings", [HOG, YUNET], ids=["hog", "yunet"])
@pytest.mark.parametrize("shape", [(240, 320, 3), (60, 90, 3), (1200, 900, 3), (7, 5000, 3), (3000, 2, 3), (1, 1, 3)])
def test_detectors_find_nothing_on_a_blank_image(settings: DetectorSettings, shape: tuple[int, int, int]) -> None:
    assert FaceDetector(settings).detect(np.full(shape, 127, np.uint8)) == []


def test_boxes_are_clipped_to_the_image() -> None:
    assert _clip(-10.4, 5, 50, 50, width=100, height=100).as_dict() == {"x": 0, "y": 5, "w": 40, "h": 50}
    assert _clip(90, 90, 50, 50, width=100, height=100).as_dict() == {"x": 90, "y": 90, "w": 10, "h": 10}
    assert _clip(97, 0, 50, 50, width=100, height=100) is None


def test_recall_is_reported_in_the_clean_metrics() -> None:
    from bbt.pipeline.annotations import Annotation
    from bbt.pipeline.clean import ImageJob, ImageResult
    from bbt.vision.faces import Box

    found, missed = (Annotation("a/1.jpg", Box(0, 0, 10, 10), "raj", "accepted"),
                     Annotation("a/1.jpg", Box(50, 50, 10, 10), "raj", "accepted"))
    rejected = Annotation("a/1.jpg", Box(80, 80, 10, 10), None, "rejected")
    jobs = [ImageJob(("a/1.jpg",), (found, missed, rejected))]
    results = [ImageResult(("a/1.jpg",), missed=[missed])]
    assert summarize(jobs, results, ("howard", "raj"))["detector_recall"] == 0.5
