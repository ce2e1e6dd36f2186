"""`bbt review` puts first the detections nobody reviewed that the champion answers "can't tell" (issue 24): the
faces in its band of doubt, too small or too blurred, found from the review's cached descriptors, exactly as the
service answers the same faces from their photos."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import joblib
import pytest

from bbt import CANT_TELL, artifacts
from bbt.config import load_params
from bbt.model.predict import ActorClassifier
from bbt.review.descriptors import DESCRIPTOR_CACHE
from bbt.review.doubts import champion_doubts
from bbt.review.verdicts import Reviewer
from bbt.vision.faces import Box
from bbt.vision.images import decode_photo
from tests.conftest import Project

pytestmark = pytest.mark.integration


def test_the_faces_the_champion_cannot_tell_come_first_and_the_service_says_the_same_of_each(
        trained_project: Project, tmp_path: Path) -> None:
    root = tmp_path / "project"  # the descriptor cache it writes reaches no other test
    shutil.copytree(trained_project.root, root, symlinks=True,
                    ignore=shutil.ignore_patterns("mlruns", "bentoml", "prefect", "*.log"))
    shutil.rmtree(root / DESCRIPTOR_CACHE.parent, ignore_errors=True)  # described here, from clean's crops
    params = load_params(root / "params.yaml")
    classifier = ActorClassifier.from_info(joblib.load(root / artifacts.MODEL),
                                           json.loads((root / artifacts.MODEL_INFO).read_text()))
    doubts = champion_doubts(root, params, classifier)
    kinds = {reason.split(":")[0].split(" ")[0] for reason in doubts.values()}
    assert {"distance", "face"} <= kinds, kinds  # the dataset's detections hold band faces and small ones

    by_photo: dict[str, list[Box]] = defaultdict(list)
    for image, box in doubts:
        by_photo[image].append(box)
    for image, boxes in sorted(by_photo.items()):
        photo = decode_photo((root / params.data.raw / image).read_bytes(), image, 40_000_000, classifier.decode_side)
        for face in classifier.answer_boxes(photo, boxes):
            assert (face.label, face.reason) == (CANT_TELL, doubts[image, face.box]), (image, face)

    queue = Reviewer(root, params.data, None, classifier.model.min_face_width, params.cast, "", doubts).queue
    first = queue[:len(doubts)]
    assert all(item.source == "cant_tell" for item in first)
    assert {(item.image, item.box) for item in first} == set(doubts)
    assert all(item.source != "cant_tell" for item in queue[len(doubts):])
