"""Validation of annotations.csv and matching detections to the human review."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.errors import DataError
from bbt.pipeline.annotations import Annotation, load_annotations, match
from bbt.vision.faces import Box

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
        ("raj/a.jpg,1,2,30,30,Penny!,accepted\n", (r"annotations.csv:2: an accepted face is labelled with a person's "
                                                 r"name")),
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"annotations.csv is empty: it needs at least the header line `image,x,y,w,h,label,review`"),
        (HEADER.encode() + b'raj/a.jpg,1,2,30,30,"raj,accepted\n', r"annotations.csv is not a well-formed CSV"),
        (HEADER.encode() + b"raj/a.jpg,1,2,30,30,raj,accepted\nraj/\xe9.jpg,1,2,30,30,raj,accepted\n",
         r"annotations.csv:3: byte b'\\xe9' is not UTF-8 text: save the file as UTF-8"),
        (HEADER.encode() + b"raj/a.jpg,1,2,1e400,30,raj,accepted\n",
         r"annotations.csv:2: x, y, w, h must be whole numbers of pixels, got '1', '2', '1e400', '30'"),
        (HEADER.encode() + b"raj/a.jpg,96.7,2,30,30,raj,accepted\n", r"annotations.csv:2: .* got '96.7'"),
        (HEADER.encode() + b"raj/a.jpg,-4,2,30,30,raj,accepted\n", r"annotations.csv:2: .* got '-4'"),
        (HEADER.encode() + b",1,2,30,30,raj,accepted\n", r"annotations.csv:2: the image column is empty"),
    ],
    ids=["empty", "unbalanced-quote", "not-utf8", "overflow", "fraction", "negative", "no-image"],
)
def test_malformed_files_stop_with_the_file_row_and_fix(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "annotations.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_annotations(path)


def test_a_file_name_that_is_not_utf8_is_refused_by_name_before_any_work(tmp_path: Path) -> None:
    import os

    from bbt.pipeline.clean import list_images

    (tmp_path / "raj").mkdir()
    (tmp_path / "raj/good.jpg").write_bytes(b"x")
    with open(os.path.join(os.fsencode(tmp_path / "raj"), b"caf\xe9.jpg"), "wb") as out:
        out.write(b"x")
    with pytest.raises(DataError, match=r"the file name b'raj/caf\\xe9.jpg' is not valid UTF-8: rename it"):
        list_images(tmp_path)
