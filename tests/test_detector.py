"""The detectors: settings on generated images, and recall against the accepted annotations on real data."""

from __future__ import annotations

import threading
from dataclasses import asdict, replace

import numpy as np
import pytest

from bbt.annotations import load_annotations
from bbt.clean import list_images, map_images, plan_jobs, reviewed_annotations, summarize
from bbt.config import CleanParams, DataParams, load_params
from bbt.faces import DetectorSettings, FaceDetector, _clip
from bbt.images import decode_image
from tests.conftest import Project

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


@pytest.mark.integration
@pytest.mark.parametrize("settings", [HOG, YUNET], ids=["hog", "yunet"])
def test_one_detector_serves_many_threads_with_the_same_answers(settings: DetectorSettings,
                                                                 pulled_project: Project) -> None:
    detector = FaceDetector(settings)
    images = [decode_image(path.read_bytes()) for path in sorted((pulled_project.root / "data/raw/raj").iterdir())[:4]]
    expected = [detector.detect(image) for image in images]
    assert sum(map(len, expected)) >= 4  # real faces, so a wrong answer would show
    errors: list[BaseException] = []

    def work(image: np.ndarray, boxes: list) -> None:
        try:
            for _ in range(3):
                assert detector.detect(image) == boxes
        except BaseException as err:  # noqa: BLE001 - any failure in a thread fails the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(images * 2, expected * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def detect_all(project: Project, params: CleanParams, second_review: bool = True) -> dict:
    """The clean stage's detection and matching over the whole dataset, without writing its products; the
    accepted faces are those of both reviews, or of annotations.csv alone."""
    raw = project.root / "data/raw"
    if second_review:
        data = DataParams(raw, project.root / "data/annotations.csv", project.root / "review/corrections.csv")
        annotations = reviewed_annotations(data)[0]
    else:
        annotations = load_annotations(project.root / "data/annotations.csv", raw)
    jobs = plan_jobs(raw, list_images(raw), annotations)
    report = summarize(jobs, map_images(jobs, raw, params))
    report["accepted_annotations"] = len({(a.image, a.box) for a in annotations if a.review == "accepted"})
    return report


@pytest.mark.integration
def test_the_shipped_detector_finds_at_least_97_percent_of_the_accepted_faces(pulled_project: Project) -> None:
    params = load_params(pulled_project.root / "params.yaml").clean
    assert params.detector == "yunet"
    report = detect_all(pulled_project, replace(params, workers=2))
    assert report["accepted_annotations"] > 135  # the second review's accepted boxes count too
    assert report["detector_recall"] >= 0.97
    assert report["total"]["accepted"] >= 0.97 * report["accepted_annotations"]
    assert min(report["faces_per_label"].values()) >= 10


@pytest.mark.integration
def test_the_exact_haar_rule_still_recovers_every_accepted_face(pulled_project: Project) -> None:
    report = detect_all(pulled_project, CleanParams(detector="haar", decode_side=0, workers=2), second_review=False)
    assert report["detector_recall"] == 1.0 and report["total"]["missed_annotations"] == 0
    assert sum(report["faces_per_label"].values()) == report["accepted_annotations"] == 135
    assert report["faces_per_label"] == {"howard": 50, "leonard": 11, "raj": 36, "sheldon": 38}


def test_recall_is_reported_in_the_clean_metrics() -> None:
    from bbt.annotations import Annotation
    from bbt.clean import ImageJob, ImageResult
    from bbt.faces import Box

    found, missed = (Annotation("a/1.jpg", Box(0, 0, 10, 10), "raj", "accepted"),
                     Annotation("a/1.jpg", Box(50, 50, 10, 10), "raj", "accepted"))
    rejected = Annotation("a/1.jpg", Box(80, 80, 10, 10), None, "rejected")
    jobs = [ImageJob(("a/1.jpg",), (found, missed, rejected))]
    results = [ImageResult(("a/1.jpg",), missed=[missed])]
    assert summarize(jobs, results)["detector_recall"] == 0.5
