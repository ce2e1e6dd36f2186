"""The detectors on the real dataset: thread safety on real faces, recall against the accepted annotations."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from bbt.config import CleanParams, DataParams, load_params
from bbt.pipeline.annotations import load_annotations
from bbt.pipeline.clean import list_images, map_images, plan_jobs, reviewed_annotations, summarize
from bbt.vision.faces import DetectorSettings, FaceDetector
from bbt.vision.images import decode_image
from tests.conftest import Project

pytestmark = pytest.mark.integration

HOG = DetectorSettings(detector="hog")
YUNET = DetectorSettings(detector="yunet")


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
    accepted faces are those of both reviews, or of annotations.csv alone. The tests here ask for one worker
    process: under `make test` this module runs beside the trained project's tests, the suite's longest path."""
    raw = project.root / "data/raw"
    if second_review:
        data = DataParams(raw, project.root / "data/annotations.csv", project.root / "review/corrections.csv")
        annotations = reviewed_annotations(data)[0]
    else:
        annotations = load_annotations(project.root / "data/annotations.csv", raw)
    jobs = plan_jobs(raw, list_images(raw), annotations)
    report = summarize(jobs, map_images(jobs, raw, params), ("howard", "leonard", "raj", "sheldon"))
    report["accepted_annotations"] = len({(a.image, a.box) for a in annotations if a.review == "accepted"})
    return report


def test_the_shipped_detector_finds_at_least_97_percent_of_the_accepted_faces(pulled_project: Project,
                                                                             expected: dict) -> None:
    params = load_params(pulled_project.root / "params.yaml").clean
    assert params.detector == "yunet"
    report = detect_all(pulled_project, replace(params, workers=1))
    # The second review's accepted boxes count too.
    assert report["accepted_annotations"] > sum(expected["first_review"]["accepted"].values())
    assert report["detector_recall"] >= 0.97
    assert report["total"]["accepted"] >= 0.97 * report["accepted_annotations"]
    assert min(report["faces_per_label"].values()) >= 10


def test_the_exact_haar_rule_still_recovers_every_accepted_face(pulled_project: Project, expected: dict) -> None:
    report = detect_all(pulled_project, CleanParams(detector="haar", decode_side=0, workers=1), second_review=False)
    assert report["detector_recall"] == 1.0 and report["total"]["missed_annotations"] == 0
    assert report["faces_per_label"] == expected["first_review"]["accepted"]
    assert sum(report["faces_per_label"].values()) == report["accepted_annotations"]
