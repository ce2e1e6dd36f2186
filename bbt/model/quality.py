"""Which faces the model can judge at all: the smallest face width whose answers keep their promise.

A face of 20 px carries too little for the descriptor: calling it "not one of the four" is a claim the model
cannot back. The search learns the smallest width it can judge by cross-validation on the training split: each
held-out face is shrunk to a width of WIDTHS (resized down, then back up to the crop size, as `crop_face` does
with a small box) and answered by a model that never saw it. A width is judged when the actors' faces shrunk to it
and to every larger width of WIDTHS are named right at least `min_width_recall` times as often as at full size,
and given another actor's name no more often than the strangers may be given one (search.target_false_accept).
Faces narrower than that are answered "can't tell" (bbt.CANT_TELL); the width travels inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from bbt import UNKNOWN

# Face widths (px, in the photo) the search shrinks held-out faces to; the training faces are 56 px and more.
WIDTHS = (12, 16, 20, 24, 28, 32, 40, 48)


def shrink(crops: np.ndarray, width: int) -> np.ndarray:
    """The crops as a face `width` px wide would give them: down to width x width, then back to the crop size."""
    size = crops.shape[1]
    return np.stack([cv2.resize(cv2.resize(crop, (width, width), interpolation=cv2.INTER_AREA), (size, size),
                                interpolation=cv2.INTER_AREA) for crop in crops])


@dataclass(frozen=True)
class WidthScores:
    """Out-of-fold answers at one face width: actors named right, actors named as another actor, strangers
    given a name (shares of their faces)."""

    width: int
    actor_recall: float
    misnamed: float
    false_accept: float

    def as_row(self) -> dict[str, float]:
        return {"width": self.width, "actor_recall": round(self.actor_recall, 4),
                "misnamed": round(self.misnamed, 4), "false_accept": round(self.false_accept, 4)}


def width_scores(width: int, labels: np.ndarray, answers: np.ndarray) -> WidthScores:
    """Score out-of-fold answers (actors, UNKNOWN) of faces shrunk to `width` against their labels."""
    labels, answers = np.asarray(labels, dtype=object), np.asarray(answers, dtype=object)
    actors, strangers = labels != UNKNOWN, labels == UNKNOWN
    said = answers[actors]
    return WidthScores(width, float((said == labels[actors]).mean()),
                       float(((said != labels[actors]) & (said != UNKNOWN)).mean()),
                       float((answers[strangers] != UNKNOWN).mean()) if strangers.any() else 0.0)


def smallest_judged_width(scores: list[WidthScores], full_recall: float, min_width_recall: float,
                          target_false_accept: float) -> int:
    """The smallest width from which on every measured width keeps the promise (module docstring); the
    largest measured width + 1 when none does (then only faces larger than every shrunk one are judged)."""
    smallest = max(s.width for s in scores) + 1
    for score in sorted(scores, key=lambda s: s.width, reverse=True):
        keeps = score.actor_recall >= min_width_recall * full_recall and \
            score.misnamed <= target_false_accept and score.false_accept <= target_false_accept
        if not keeps:
            break
        smallest = score.width
    return smallest
