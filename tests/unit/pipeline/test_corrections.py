"""The second review (review/corrections.csv): validation, what it changes, and that clean honours it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.errors import DataError
from bbt.pipeline.annotations import Annotation, apply_corrections, load_annotations, load_corrections
from bbt.vision.faces import Box

ANNOTATIONS = """image,x,y,w,h,label,review
howard/a.jpg,10,10,50,50,howard,accepted
howard/a.jpg,100,10,50,50,,rejected
raj/b.jpg,5,5,40,40,raj,accepted
"""
HEADER = "image,x,y,w,h,label,review,reason\n"


def annotations(tmp_path: Path) -> list[Annotation]:
    path = tmp_path / "annotations.csv"
    path.write_text(ANNOTATIONS)
    return load_annotations(path)


def corrections_file(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "corrections.csv"
    path.write_text(HEADER + rows)
    return path


def test_each_kind_of_second_review_is_recognised_and_applied(tmp_path: Path) -> None:
    reviewed = annotations(tmp_path)
    corrections = load_corrections(corrections_file(tmp_path, (
        "howard/a.jpg,10,10,50,50,raj,accepted,it is Raj\n"
        "howard/a.jpg,100,10,50,50,howard,accepted,the other half of the swap\n"
        'raj/b.jpg,5,5,40,40,raj,accepted,"a drawing, but Raj"\n'
    )), reviewed)
    assert [c.kind for c in corrections] == ["relabelled", "accepted", "confirmed"]
    assert corrections[2].reason == "a drawing, but Raj"
    applied = apply_corrections(reviewed, corrections)
    assert [(a.label, a.review, a.source) for a in applied] == [
        ("raj", "accepted", "corrections"), ("howard", "accepted", "corrections"), ("raj", "accepted", "corrections")]
    assert applied[0].box == Box(10, 10, 50, 50)


def test_a_correction_can_reject_an_accepted_face(tmp_path: Path) -> None:
    reviewed = annotations(tmp_path)
    (correction,) = load_corrections(corrections_file(tmp_path, "raj/b.jpg,5,5,40,40,,rejected,not a face\n"),
                                     reviewed)
    assert correction.kind == "unusable"
    assert apply_corrections(reviewed, [correction])[2].review == "rejected"


def test_a_rejected_box_can_be_a_stranger_or_unusable(tmp_path: Path) -> None:
    reviewed = annotations(tmp_path)
    (correction,) = load_corrections(corrections_file(tmp_path, "howard/a.jpg,100,10,50,50,,stranger,Penny\n"),
                                     reviewed)
    assert correction.kind == "stranger"
    applied = apply_corrections(reviewed, [correction])[1]
    assert (applied.review, applied.label, applied.first_review) == ("stranger", None, "rejected")
    (unusable,) = load_corrections(corrections_file(tmp_path, "howard/a.jpg,100,10,50,50,,rejected,a toy\n"),
                                   reviewed)
    assert unusable.kind == "unusable"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("howard/a.jpg,11,10,50,50,raj,accepted,typo in x\n",
         r"corrections.csv:2: no annotations.csv row has image 'howard/a.jpg' and box"),
        ("howard/a.jpg,10,10,50,50,raj,accepted,\n", r"corrections.csv:2: give a reason"),
        ("howard/a.jpg,10,10,50,50,Penny!,accepted,who\n", (r"corrections.csv:2: an accepted face is labelled with a "
                                                          r"person's name: 'Penny!' is not a name")),
        ("howard/a.jpg,100,10,50,50,raj,stranger,Penny\n",
         r"corrections.csv:2: a stranger face must have an empty label, got 'raj'"),
        ("howard/a.jpg,100,10,50,50,,strange,Penny\n", r"corrections.csv:2: review 'strange' must be one of"),
        ("howard/a.jpg,10,10,50,50,raj,accepted,one\nhoward/a.jpg,10,10,50,50,howard,accepted,two\n",
         r"corrections.csv:3: a second correction of the same box"),
    ],
)
def test_a_bad_correction_names_its_row_and_the_fix(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_corrections(corrections_file(tmp_path, row), annotations(tmp_path))


@pytest.mark.parametrize(
    ("rows", "line"),
    [
        ("\nhoward/a.jpg,10,10,50,50,Penny!,accepted,who\n", 3),  # a blank line before the row
        ("raj/b.jpg,5,5,40,40,raj,accepted,ok\n\n \t\n\r\nhoward/a.jpg,10,10,50,50,Penny!,accepted,who\n", 6),
        ('raj/b.jpg,5,5,40,40,raj,accepted,"two\r\nlines"\nhoward/a.jpg,10,10,50,50,Penny!,accepted,who\n', 4),
        ("raj/b.jpg,5,5,40,40,raj,accepted,ok\r\rhoward/a.jpg,10,10,50,50,Penny!,accepted,who\r", 4),
    ],
    ids=["blank-line", "blank-and-whitespace-lines", "a-reason-over-two-lines", "old-mac-line-ends"],
)
def test_a_bad_row_is_named_by_its_line_in_the_file(tmp_path: Path, rows: str, line: int) -> None:
    path = tmp_path / "corrections.csv"
    path.write_bytes((HEADER + rows).encode())
    with pytest.raises(DataError, match=rf"corrections.csv:{line}: an accepted face is labelled with a person's name") as raised:
        load_corrections(path, annotations(tmp_path))
    assert (HEADER + rows).replace("\r\n", "\n").replace("\r", "\n").split("\n")[line - 1].startswith(
        "howard/a.jpg,10,10,50,50,Penny!"), "the test's own line count"
    assert "1 invalid row" in str(raised.value)


def test_a_missing_corrections_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="create it with the header `image,x,y,w,h,label,review,reason`"):
        load_corrections(tmp_path / "nope.csv", annotations(tmp_path))


def test_a_box_annotations_lacks_is_a_new_review_when_the_photo_exists(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "howard").mkdir(parents=True)
    (raw / "howard/a.jpg").write_bytes(b"a photo")
    reviewed = annotations(tmp_path)
    rows = "howard/a.jpg,200,20,30,30,leonard,accepted,bbt review: an unreviewed detection\n"
    (new,) = load_corrections(corrections_file(tmp_path, rows), reviewed, raw)
    assert (new.kind, new.original, new.corrected.label) == ("new", None, "leonard")
    applied = apply_corrections(reviewed, [new])
    assert applied[:3] == reviewed and applied[3].box == Box(200, 20, 30, 30)
    assert (applied[3].source, applied[3].first_review) == ("corrections", "unreviewed")
    # Without the photos' folder only annotations.csv rows can be named; with it, the photo must exist.
    with pytest.raises(DataError, match="no annotations.csv row"):
        load_corrections(corrections_file(tmp_path, rows), reviewed)
    with pytest.raises(DataError, match="does not exist under"):
        load_corrections(corrections_file(tmp_path, rows.replace("a.jpg", "gone.jpg")), reviewed, raw)
