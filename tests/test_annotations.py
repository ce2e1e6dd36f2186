"""Validation of annotations.csv and matching detections to the human review."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.annotations import Annotation, load_annotations, match
from bbt.errors import DataError
from bbt.faces import Box

HEADER = "image,x,y,w,h,label,review\n"


def write(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "annotations.csv"
    path.write_text(HEADER + rows)
    return path


def test_valid_rows_load(tmp_path: Path) -> None:
    found = load_annotations(write(tmp_path, "raj/a.jpg,1,2,30,30,raj,accepted\nraj/a.jpg,50,2,30,30,,rejected\n"))
    assert found[0] == Annotation("raj/a.jpg", Box(1, 2, 30, 30), "raj", "accepted")
    assert found[1].label is None and found[1].review == "rejected"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("raj/a.jpg,1,2,30,30,penny,accepted\n", r"annotations.csv:2: accepted face needs a label"),
        ("raj/a.jpg,1,2,30,30,raj,rejected\n", "rejected face must have an empty label"),
        ("raj/a.jpg,1,2,30,30,raj,maybe\n", "review 'maybe' must be one of"),
        ("raj/a.jpg,1,2,0,30,raj,accepted\n", "w, h > 0"),
    ],
)
def test_invalid_rows_are_named(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_annotations(write(tmp_path, row))


def test_missing_image_is_reported(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="image 'raj/gone.jpg' does not exist"):
        load_annotations(write(tmp_path, "raj/gone.jpg,1,2,30,30,raj,accepted\n"), tmp_path / "raw")


def test_missing_file_says_dvc_pull(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `dvc pull data.dvc`"):
        load_annotations(tmp_path / "nope.csv")


def test_match_needs_enough_overlap_and_prefers_accepted() -> None:
    rejected = Annotation("a", Box(0, 0, 100, 100), None, "rejected")
    accepted = Annotation("b", Box(5, 5, 100, 100), "sheldon", "accepted")
    assert match(Box(0, 0, 100, 100), [rejected, accepted], 0.5) is accepted
    assert match(Box(0, 0, 100, 100), [rejected], 0.5) is rejected
    assert match(Box(300, 300, 50, 50), [rejected, accepted], 0.5) is None
