"""Data tests on the real dataset pulled from the DVC remote: schema, label set, files, uniqueness; the counts
are tests/data/expectations.yaml's."""

from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import pytest

from bbt.pipeline.annotations import COLUMNS, load_annotations, load_corrections
from tests.conftest import Project

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

pytestmark = pytest.mark.data


def test_annotations_schema_and_labels(pulled_project: Project) -> None:
    path = pulled_project.root / "data/annotations.csv"
    frame = pd.read_csv(path)
    assert list(frame.columns) == COLUMNS
    assert set(frame["review"]) == {"accepted", "rejected"}
    assert set(frame.loc[frame.review == "accepted", "label"]) == set(ACTORS)
    assert frame.loc[frame.review == "rejected", "label"].isna().all()
    assert not frame.duplicated(["image", "x", "y", "w", "h"]).any()


def test_every_annotated_image_exists_and_validates(pulled_project: Project, expected: dict) -> None:
    root = pulled_project.root / "data"
    annotations = load_annotations(root / "annotations.csv", root / "raw")
    counts = Counter(a.label for a in annotations if a.review == "accepted")
    assert counts == expected["first_review"]["accepted"]
    assert sum(a.review == "rejected" for a in annotations) == expected["first_review"]["rejected"]


def test_every_second_review_names_a_reviewed_box(pulled_project: Project, expected: dict) -> None:
    root = pulled_project.root
    annotations = load_annotations(root / "data/annotations.csv", root / "data/raw")
    corrections = load_corrections(root / "review/corrections.csv", annotations, root / "data/raw")
    assert Counter(c.kind for c in corrections) == expected["second_review"]
    # Every box the first review rejected has a second verdict, and each verdict says what the face shows.
    second = {(c.original.image, c.original.box) for c in corrections if c.original is not None}
    assert all((a.image, a.box) in second for a in annotations if a.review == "rejected")
    assert all(c.reason for c in corrections)
    # An accepted face is one of the four; a stranger or an unusable face has no label.
    assert all((c.corrected.label in ACTORS) == (c.corrected.review == "accepted") for c in corrections)


def test_raw_layout_is_one_folder_per_actor(pulled_project: Project, expected: dict) -> None:
    raw = pulled_project.root / "data/raw"
    assert sorted(p.name for p in raw.iterdir()) == list(ACTORS)
    files = [p for p in raw.rglob("*") if p.is_file()]
    assert len(files) == expected["images"]
    digests = Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in files)
    assert sorted(n for n in digests.values() if n > 1) == sorted(expected["identical_photos"])
