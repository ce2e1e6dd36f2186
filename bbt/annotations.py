"""The human review of face boxes (data/annotations.csv): load, validate, and match detections to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bbt import ACTORS
from bbt.errors import DataError
from bbt.faces import Box

COLUMNS = ["image", "x", "y", "w", "h", "label", "review"]
REVIEWS = ("accepted", "rejected")


@dataclass(frozen=True)
class Annotation:
    image: str
    box: Box
    label: str | None
    review: str


def load_annotations(path: Path, raw_dir: Path | None = None) -> list[Annotation]:
    """Read and validate annotations.csv; every problem names its row and how to fix it."""
    if not path.exists():
        raise DataError(f"{path} not found: run `dvc pull data.dvc` to fetch the dataset (see README, 'Data')")
    frame = pd.read_csv(path, dtype={"label": "string", "image": "string", "review": "string"})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; expected columns {COLUMNS}")
    problems: list[str] = []
    annotations: list[Annotation] = []
    for row_number, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{path}:{row_number}"
        review = row.review if isinstance(row.review, str) else ""
        label = row.label if isinstance(row.label, str) and row.label else None
        if review not in REVIEWS:
            problems.append(f"{where}: review {review!r} must be one of {REVIEWS}")
            continue
        if review == "accepted" and label not in ACTORS:
            problems.append(f"{where}: accepted face needs a label from {ACTORS}, got {label!r}")
            continue
        if review == "rejected" and label is not None:
            problems.append(f"{where}: rejected face must have an empty label, got {label!r}")
            continue
        try:
            box = Box(int(row.x), int(row.y), int(row.w), int(row.h))
        except (TypeError, ValueError):
            problems.append(f"{where}: x, y, w, h must be whole numbers")
            continue
        if box.w <= 0 or box.h <= 0 or box.x < 0 or box.y < 0:
            problems.append(f"{where}: box {box} must have x, y >= 0 and w, h > 0")
            continue
        if raw_dir is not None and not (raw_dir / row.image).is_file():
            problems.append(f"{where}: image {row.image!r} does not exist under {raw_dir}")
            continue
        annotations.append(Annotation(str(row.image), box, label, review))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{path} has {len(problems)} invalid row(s):\n  {shown}{more}")
    return annotations


def match(box: Box, annotations: list[Annotation], iou_threshold: float) -> Annotation | None:
    """The review of a detected box: the best-overlapping annotation, preferring accepted ones.

    A byte-identical photo can sit in two actors' folders; a face rejected in one ("not Leonard")
    and accepted in the other ("Sheldon") is Sheldon, so an accepted review wins.
    """
    candidates = [a for a in annotations if box.iou(a.box) >= iou_threshold]
    if not candidates:
        return None
    return max(candidates, key=lambda a: (a.review == "accepted", box.iou(a.box)))
