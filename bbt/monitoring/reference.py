"""The champion's test-time distribution: what `bbt monitor` compares the served answers with.

It is the model's own answers on the held-out test split (the faces the search never saw), in the form the
service logs them (bbt/monitoring/answers.py): per face the label and the confidence, and per test photo the number of
faces the detector finds in it. `bbt register` stores it in the logged model's metadata (`monitoring_reference`),
so the reference travels with the model into the BentoML store and every bento built from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt import CANT_TELL, UNKNOWN
from bbt.artifacts import load_faces, load_split

METADATA_KEY = "monitoring_reference"
# clean's list of every detection (artifacts/faces/detections.csv; bbt.artifacts.DETECTIONS), one row per face.
DETECTIONS = Path("artifacts/faces/detections.csv")


@dataclass(frozen=True)
class Reference:
    """Per test face its answer (an actor or "unknown") and confidence; per test photo its detected faces."""

    labels: tuple[str, ...]
    confidences: tuple[float, ...]
    faces_per_photo: tuple[int, ...]
    source: str = "the model's metadata"
    classes: tuple[str, ...] = ()  # the people the model names (its cast); () = those its answers name

    @property
    def people(self) -> tuple[str, ...]:
        """The people `bbt monitor` compares confidences for: the model's classes."""
        return self.classes or tuple(sorted(set(self.labels) - {UNKNOWN, CANT_TELL}))

    def as_metadata(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "confidences": list(self.confidences),
                "faces_per_photo": list(self.faces_per_photo), "classes": list(self.classes)}

    @classmethod
    def from_metadata(cls, raw: dict[str, Any], source: str) -> Reference:
        return cls(tuple(str(label) for label in raw["labels"]), tuple(float(c) for c in raw["confidences"]),
                   tuple(int(n) for n in raw.get("faces_per_photo", [])), source,
                   tuple(str(c) for c in raw.get("classes", [])))


def faces_per_photo(images: np.ndarray, detections: Path = DETECTIONS) -> tuple[int, ...]:
    """How many faces the detector found in each of `images` (photos, as detections.csv names them), sorted by
    photo name; photos detections.csv does not list are left out."""
    if not detections.exists():
        return ()
    import pandas as pd

    counts = Counter(pd.read_csv(detections, usecols=["image"])["image"].astype(str))
    return tuple(counts[name] for name in sorted(set(map(str, images))) if name in counts)


def reference_on_test_split(model: Any) -> Reference:
    """The model's answers on the test split, rounded as the service rounds them (bbt.model.predict)."""
    faces = load_faces()
    _, test = load_split()
    crops = faces["crops"][test]
    if hasattr(model, "decide"):
        decisions = model.decide(crops)
        labels, proba = decisions.labels, decisions.proba
    else:  # a closed-set model (register takes one, and never promotes it): every face is named an actor
        proba = model.predict_proba(crops)
        labels = model.classes_[proba.argmax(axis=1)]
    return Reference(tuple(str(label) for label in labels),
                     tuple(round(float(row.max()), 4) for row in proba),
                     faces_per_photo(faces["images"][test]),
                     "the project's test split (artifacts/), scored now: the model carries no reference",
                     tuple(str(c) for c in model.classes_))
