"""The human review of face boxes: data/annotations.csv, the second review of some of its rows
(review/corrections.csv, versioned in git), and matching detections to them."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from bbt.config import check_person_name
from bbt.errors import DataError
from bbt.vision.faces import Box

COLUMNS = ["image", "x", "y", "w", "h", "label", "review"]
CORRECTION_COLUMNS = [*COLUMNS, "reason"]
# accepted: the face is the labelled actor; stranger: a real face of anyone else (a negative example for the
# open-set rule); rejected: not usable as either (first review: any face not of the folder's actor).
REVIEWS = ("accepted", "rejected", "stranger")


@dataclass(frozen=True)
class Annotation:
    image: str
    box: Box
    label: str | None
    review: str
    source: str = "annotations"  # or "corrections": the second review changed or confirmed this row
    first_review: str = ""  # what annotations.csv said, when the second review changed it


WHOLE_NUMBER = re.compile(r"[0-9]+")


def record_lines(text: str) -> list[int]:
    """The file line on which each data row of a CSV starts, counted as pandas reads the rows: it skips lines of
    only spaces and tabs (before the header too), and a quoted field can span lines."""
    physical: list[str] = []  # the lines of the record being read

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            physical.append(line)
            yield line

    starts: list[int] = []
    line = 1
    try:
        for _ in csv.reader(lines()):
            if len(physical) > 1 or physical[0].strip(" \t\r\n"):
                starts.append(line)
            line += len(physical)
            physical.clear()
    except csv.Error:  # where pandas read on: the count then differs, and _read_rows numbers rows in order
        pass
    return starts[1:]  # the first is the header


def _read_rows(path: Path, columns: list[str], fix: str) -> tuple[pd.DataFrame, list[int]]:
    """Every cell as text (boxes are checked row by row), and the file line each row starts on; a file that is
    not a readable UTF-8 CSV is a DataError."""
    if not path.exists():
        raise DataError(f"{path} not found: {fix}")
    header = ",".join(columns)
    try:
        frame = pd.read_csv(path, dtype=str, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: it needs at least the header line `{header}`") from None
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:  # pandas decodes in chunks: find the byte's place in the whole file
            data.decode("utf-8")
            at = 0
        except UnicodeDecodeError as err:
            at = err.start
        line = data[:at].count(b"\n") + 1
        raise DataError(f"{path}:{line}: byte {data[at:at + 1]!r} is not UTF-8 text: save the file as UTF-8") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path} is not a well-formed CSV ({str(err).strip()}): check that every quoted field "
                        f"is closed and every row has the columns `{header}`") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; expected columns {columns}")
    lines = record_lines(path.read_bytes().decode("utf-8"))
    if len(lines) != len(frame):  # a quirk of pandas' parser the count above misses: number the rows in order
        lines = list(range(2, len(frame) + 2))
    return frame, lines


def _parse(
    frame: pd.DataFrame, lines: list[int], path: Path, raw_dir: Path | None
) -> tuple[list[tuple[int, Annotation]], list[str]]:
    """(row index, Annotation) per valid row, and a message naming each invalid row by its line in the file."""
    problems: list[str] = []
    annotations: list[tuple[int, Annotation]] = []
    for index, row in enumerate(frame.itertuples(index=False)):
        where = f"{path}:{lines[index]}"
        if not isinstance(row.image, str) or not row.image.strip():
            problems.append(f"{where}: the image column is empty; give the photo's path under data/raw")
            continue
        review = row.review if isinstance(row.review, str) else ""
        label = row.label if isinstance(row.label, str) and row.label else None
        if review not in REVIEWS:
            problems.append(f"{where}: review {review!r} must be one of {REVIEWS}")
            continue
        why = check_person_name(label) if review == "accepted" else None
        if why:
            problems.append(f"{where}: an accepted face is labelled with a person's name: {why}")
            continue
        if review != "accepted" and label is not None:
            problems.append(f"{where}: a {review} face must have an empty label, got {label!r} "
                            "(a face of a person in the cast is `accepted` with its label)")
            continue
        values = [v.strip() if isinstance(v, str) else "" for v in (row.x, row.y, row.w, row.h)]
        if not all(WHOLE_NUMBER.fullmatch(v) and len(v) <= 9 for v in values):
            problems.append(f"{where}: x, y, w, h must be whole numbers of pixels, got {', '.join(map(repr, values))}")
            continue
        box = Box(*map(int, values))
        if box.w <= 0 or box.h <= 0:
            problems.append(f"{where}: box {box} must have x, y >= 0 and w, h > 0")
            continue
        if raw_dir is not None and not (raw_dir / row.image).is_file():
            problems.append(f"{where}: image {row.image!r} does not exist under {raw_dir}")
            continue
        annotations.append((index, Annotation(str(row.image), box, label, review)))
    return annotations, problems


def _raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{path} has {len(problems)} invalid row(s):\n  {shown}{more}")


def load_annotations(path: Path, raw_dir: Path | None = None) -> list[Annotation]:
    """Read and validate annotations.csv; every problem names its row and how to fix it."""
    frame, lines = _read_rows(path, COLUMNS, "run `dvc pull data.dvc` to fetch the dataset (see README, 'Data')")
    parsed, problems = _parse(frame, lines, path, raw_dir)
    _raise_problems(path, problems)
    return [annotation for _, annotation in parsed]


@dataclass(frozen=True)
class Correction:
    """A second review: of one annotations.csv row (`original`), or of a box annotations.csv lacks (a detection
    nobody had reviewed, or a face from production feedback: `original` None), with its label/review and why."""

    original: Annotation | None
    corrected: Annotation
    reason: str

    @property
    def kind(self) -> str:
        """confirmed | stranger | unusable (rejected after a second look) | relabelled (another actor) |
        accepted (a rejected box that is one of the four) | new (a box annotations.csv lacks)."""
        before, after = self.original, self.corrected
        if before is None:
            return "new"
        if (before.review, before.label) == (after.review, after.label) and after.review != "rejected":
            return "confirmed"
        if after.review == "stranger":
            return "stranger"
        if after.review == "rejected":
            return "unusable"
        return "relabelled" if before.review == "accepted" else "accepted"


def load_corrections(path: Path, annotations: list[Annotation], raw_dir: Path | None = None) -> list[Correction]:
    """Read the second review (review/corrections.csv). A row naming an annotations.csv row by image and box
    corrects it; with `raw_dir`, a row naming another box of a photo under raw_dir adds a reviewed box (what
    `bbt review` writes for unreviewed detections and production feedback). Every row gives a reason; every
    problem names its row."""
    frame, lines = _read_rows(path, CORRECTION_COLUMNS,
                              f"create it with the header `{','.join(CORRECTION_COLUMNS)}`, or point "
                              "data.corrections in params.yaml at the file")
    parsed, problems = _parse(frame, lines, path, raw_dir)
    by_key = {(a.image, a.box): a for a in annotations}
    reasons = [r if isinstance(r, str) else "" for r in frame["reason"]]
    corrections: list[Correction] = []
    seen: set[tuple[str, Box]] = set()
    for index, corrected in parsed:
        reason = reasons[index]
        where = f"{path}:{lines[index]}"
        original = by_key.get((corrected.image, corrected.box))
        if original is None and raw_dir is None:
            problems.append(f"{where}: no annotations.csv row has image {corrected.image!r} and box "
                            f"{corrected.box.as_dict()}; a correction names a reviewed box exactly as "
                            "annotations.csv has it")
        elif not reason.strip():
            problems.append(f"{where}: give a reason (what the face shows) so the next reviewer can check it")
        elif (corrected.image, corrected.box) in seen:
            problems.append(f"{where}: a second correction of the same box; keep one row per box")
        else:
            seen.add((corrected.image, corrected.box))
            corrections.append(Correction(original, corrected, reason.strip()))
    _raise_problems(path, problems)
    return corrections


def apply_corrections(annotations: list[Annotation], corrections: list[Correction]) -> list[Annotation]:
    """The annotations with every corrected row replaced by its second review, then the new boxes."""
    replaced = {(c.original.image, c.original.box):
                replace(c.corrected, source="corrections", first_review=c.original.review)
                for c in corrections if c.original is not None}
    added = [replace(c.corrected, source="corrections", first_review="unreviewed")
             for c in corrections if c.original is None]
    return [replaced.get((a.image, a.box), a) for a in annotations] + added


def match(box: Box, annotations: list[Annotation], iou_threshold: float) -> Annotation | None:
    """The review of a detected box: the best-overlapping annotation, preferring accepted ones, then strangers.

    A byte-identical photo can sit in two actors' folders; a face rejected in one ("not Leonard")
    and accepted in the other ("Sheldon") is Sheldon, so an accepted review wins.
    """
    candidates = [a for a in annotations if box.iou(a.box) >= iou_threshold]
    if not candidates:
        return None
    return max(candidates, key=lambda a: (REVIEW_PRECEDENCE.index(a.review), box.iou(a.box)))


REVIEW_PRECEDENCE = ("rejected", "stranger", "accepted")
