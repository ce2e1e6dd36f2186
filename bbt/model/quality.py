"""Which faces the model can judge at all: the smallest face width, and the least sharpness, whose answers keep
their promise.

A face of 20 px carries too little for the descriptor: calling it "not one of the four" is a claim the model
cannot back. The search learns the smallest width it can judge by cross-validation on the training split: each
held-out face is shrunk to a width of WIDTHS (resized down, then back up to the crop size, as `crop_face` does
with a small box) and answered by a model that never saw it. A width is judged when the actors' faces shrunk to it
and to every larger width of WIDTHS are named right at least `min_width_recall` times as often as at full size,
and given another actor's name no more often than the strangers may be given one (search.target_false_accept).
Faces narrower than that are answered "can't tell" (bbt.CANT_TELL); the width travels inside the model.

A blurred face (out of focus, moving) weakens one answer before the other. Its sharpness is measured on the face
crop (`sharpness`: the variance of the Laplacian over the crop's centre at SHARPNESS_SIDE px, relative to the
centre's own variance, so a face's contrast does not count). The search blurs every held-out face by each sigma
of BLURS, answers them all by models that never saw them, pools the answers by measured sharpness into the bins
of SHARPNESS_EDGES, and walks down from the sharpest bin to learn two edges (`least_judged_sharpness`):
- `min_sharpness`, down to which "not one of the four" keeps its promise: the bin's actors are named right at
  least `min_width_recall` times as often as at full sharpness (so few of them are called strangers);
- `min_sharpness_named`, down to which a name keeps its promise: the bin's faces given a name are that person at
  least `band_precision` of the time (the precision the band of doubt asks of an answer).
Both also ask that the faces from the bin up are given another actor's name, and strangers any name, no more
often than search.target_false_accept (counted over every bin from it up: a bin holds few strangers, the same
ones at several blurs). Under `min_sharpness` a face the model would call "not one of the four" is "can't tell"
(a blurred face far from everyone is not shown to be a stranger), while a name it is close enough to stays;
under `min_sharpness_named` every answer is "can't tell". A name so outlives "not one of the four" as a face
blurs (benchmarks/sharpness.py shows blurred photos answered with and without the rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from bbt import UNKNOWN

# Face widths (px, in the photo) the search shrinks held-out faces to; the training faces are 56 px and more.
WIDTHS = (12, 16, 20, 24, 28, 32, 40, 48)
# Gaussian blurs (sigma in px of the face crop; 0: as it is) the search gives held-out faces, and the sharpness
# bins it pools their answers in (lower edges; the top bin is open).
BLURS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
SHARPNESS_EDGES = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.16, 0.2, 0.3, 0.4)
# The side sharpness is measured at. The descriptor shrugs off a blur of 2 px in the 128 px crop and fails past
# 4 px; at full size both erase the finest detail alike, at 48 px mostly the second shows (benchmarks/sharpness.py:
# blurs of 0-2 px told from 4-6 px with ROC AUC 0.997 at 48 or 64 px, 0.983 at 128 px).
SHARPNESS_SIDE = 48
# A bin with fewer actor faces than this is pooled with the next less sharp one before it is judged.
MIN_BIN_ACTORS = 30


def shrink(crops: np.ndarray, width: int) -> np.ndarray:
    """The crops as a face `width` px wide would give them: down to width x width, then back to the crop size."""
    size = crops.shape[1]
    return np.stack([cv2.resize(cv2.resize(crop, (width, width), interpolation=cv2.INTER_AREA), (size, size),
                                interpolation=cv2.INTER_AREA) for crop in crops])


def sharpness(crops: np.ndarray) -> np.ndarray:
    """Per face crop (n, size, size, 3 uint8 BGR, as bbt.vision crops them): its grey image reduced to
    SHARPNESS_SIDE px, then the Laplacian's variance over the central 3/4, divided by that centre's variance."""
    values = []
    for crop in crops:
        grey = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (SHARPNESS_SIDE, SHARPNESS_SIDE),
                          interpolation=cv2.INTER_AREA).astype(np.float32)
        margin = SHARPNESS_SIDE // 8
        centre = grey[margin:SHARPNESS_SIDE - margin, margin:SHARPNESS_SIDE - margin]
        values.append(float(cv2.Laplacian(centre, cv2.CV_32F).var()) / (float(centre.var()) + 1e-6))
    return np.asarray(values, dtype=np.float64)


def blur(crops: np.ndarray, sigma: float) -> np.ndarray:
    """The crops blurred by a Gaussian of `sigma` px (0: unchanged)."""
    if sigma == 0:
        return crops
    return np.stack([cv2.GaussianBlur(crop, (0, 0), sigma) for crop in crops])


@dataclass(frozen=True)
class SharpnessScores:
    """Answers of blurred held-out faces whose sharpness is in [low, high): actor and stranger faces, actors named
    right (share); the misnamed and false-accept shares counted over every face from `low` up; the precision of the
    bin's names."""

    low: float
    high: float
    actor_faces: int
    stranger_faces: int
    actor_recall: float
    misnamed_from_here: float
    false_accept_from_here: float
    named_precision: float = 1.0  # of the bin's faces given a name, the share that are that person (1: none named)

    def as_row(self) -> dict[str, float]:
        return {"sharpness_low": self.low, "sharpness_high": self.high, "actor_faces": self.actor_faces,
                "stranger_faces": self.stranger_faces, "actor_recall": round(self.actor_recall, 4),
                "named_precision": round(self.named_precision, 4),
                "misnamed_from_here": round(self.misnamed_from_here, 4),
                "false_accept_from_here": round(self.false_accept_from_here, 4)}


def sharpness_scores(sharp: np.ndarray, labels: np.ndarray, answers: np.ndarray) -> list[SharpnessScores]:
    """Pool out-of-fold answers of blurred faces by their measured sharpness (SHARPNESS_EDGES, sharpest first; a
    bin with under MIN_BIN_ACTORS actor faces joins the next less sharp one)."""
    sharp = np.asarray(sharp, dtype=np.float64)
    labels, answers = np.asarray(labels, dtype=object), np.asarray(answers, dtype=object)
    actors = labels != UNKNOWN
    right = answers == labels
    wrong_name = actors & ~right & (answers != UNKNOWN)
    stranger_named = ~actors & (answers != UNKNOWN)
    named = answers != UNKNOWN
    bins, high = [], np.inf
    for low in [*sorted(SHARPNESS_EDGES, reverse=True), 0.0]:
        inside = (sharp >= low) & (sharp < high)
        if (actors & inside).sum() < MIN_BIN_ACTORS and low > 0:
            continue  # pooled with the next bin: `high` stays
        if not inside.any():
            break  # nothing less sharp was measured
        above = sharp >= low
        bins.append(SharpnessScores(
            float(low), float(high), int((actors & inside).sum()), int((~actors & inside).sum()),
            float(right[actors & inside].mean()) if (actors & inside).any() else 0.0,
            float(wrong_name[actors & above].mean()) if (actors & above).any() else 0.0,
            float(stranger_named[~actors & above].mean()) if (~actors & above).any() else 0.0,
            float(right[named & inside].mean()) if (named & inside).any() else 1.0))
        high = low
    return bins


def least_judged_sharpness(bins: list[SharpnessScores], full_recall: float, min_width_recall: float,
                           band_precision: float, target_false_accept: float) -> tuple[float, float]:
    """(min_sharpness, min_sharpness_named), the module docstring's two edges: the lower edge of the least sharp
    bin down to which every bin keeps each promise; the top bin's lower edge when even it does not (then only faces
    sharper than every blurred bin are judged). The names' edge is never above the other."""
    def edge(keeps: Callable[[SharpnessScores], bool]) -> float:
        least = bins[0].low if bins else 0.0
        for score in sorted(bins, key=lambda b: b.low, reverse=True):
            if not (keeps(score) and score.misnamed_from_here <= target_false_accept
                    and score.false_accept_from_here <= target_false_accept):
                break
            least = score.low
        return least

    judged = edge(lambda b: b.actor_recall >= min_width_recall * full_recall)
    named = edge(lambda b: b.named_precision >= band_precision)
    return judged, min(named, judged)


def blurred_cant_tell(answers: np.ndarray, sharp: np.ndarray, min_sharpness: float,
                      min_sharpness_named: float) -> np.ndarray:
    """Which answers the sharpness rule turns into "can't tell": every one under `min_sharpness_named`, and under
    `min_sharpness` those that say "not one of the four"."""
    answers, sharp = np.asarray(answers, dtype=object), np.asarray(sharp, dtype=np.float64)
    return (sharp < min_sharpness_named) | ((sharp < min_sharpness) & (answers == UNKNOWN))


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
