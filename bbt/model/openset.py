"""Open-set recognition: is a face one of the four actors at all, and if so, which one?

A closed-set classifier spreads all its probability over the four actors, so a stranger always gets a name.
The model here adds a rule that can answer "unknown": each rule maps a face to a *distance* (lower = more like
a known actor), and a face is named only when that distance is at most a threshold. The threshold is learned by
cross-validation on the training split, for a target false-accept rate on the reviewed strangers' faces
(`bbt.pipeline.search`), and travels inside the model, so serving, `evaluate` and the audit apply the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline

from bbt import CANT_TELL, UNKNOWN
from bbt.model.quality import blurred_cant_tell

# The space in which "is this one of the four?" is decided, whatever features the classifier uses.
EMBEDDING_SPACE = "face_embedding"

def people_in(labels: np.ndarray) -> list[str]:
    """The people the labels name (not UNKNOWN, not CANT_TELL, not a rejected face's ""), sorted: the classes the
    scores average over, whoever the cast is."""
    return sorted(str(label) for label in set(np.asarray(labels, dtype=object).tolist()) - {UNKNOWN, CANT_TELL, ""})


# (embeddings, closed-set probabilities, predicted class index, gallery embeddings, gallery class index) -> distances
RuleFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def nearest_face_distance(embeddings: np.ndarray, proba: np.ndarray, predicted: np.ndarray,
                          gallery: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Euclidean distance to the closest training face of the predicted actor (face_recognition's rule, with a
    learned tolerance instead of 0.6)."""
    distances = np.linalg.norm(embeddings[:, None, :] - gallery[None, :, :], axis=2)
    same_actor = gallery_labels[None, :] == predicted[:, None]
    return np.where(same_actor, distances, np.inf).min(axis=1)


def probability_distance(embeddings: np.ndarray, proba: np.ndarray, predicted: np.ndarray,
                         gallery: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """1 - the closed-set probability of the predicted actor: a confidence threshold, learned (kept as the
    baseline that shows why a four-way probability cannot catch strangers)."""
    return 1.0 - proba.max(axis=1)


@dataclass(frozen=True)
class Rule:
    name: str
    distance: RuleFunction
    uses_embeddings: bool
    description: str


# The open-set rules, in order of preference when candidates tie. Add a rule here and in search.open_set_rules.
RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("nearest_face", nearest_face_distance, True,
         "distance in face-embedding space to the closest training face of the predicted actor"),
    Rule("probability", probability_distance, False,
         "1 - the classifier's probability of the predicted actor"),
)}


# Search objectives (search.objective) -> the F-beta they compute over the four actors on every face: beta < 1
# weighs a stranger named as an actor (precision) over an actor answered "unknown" (recall).
OBJECTIVES: dict[str, float] = {"open_set_f05": 0.5, "open_set_f1": 1.0}


def learn_threshold(labels: np.ndarray, closest: np.ndarray, distances: np.ndarray,
                    target_false_accept: float, objective: str = "open_set_f05") -> float:
    """The distance threshold with the best objective (OBJECTIVES, `open_set_scores`) among those that give at
    most `target_false_accept` of the strangers (labels UNKNOWN) an actor's name.

    Candidates lie halfway between consecutive distances, so none hangs on one face's exact value; of the
    equally good ones the middle one is taken (deterministic, and as far from both sides as the data allows).
    Faces at or below the threshold are named.
    """
    labels, closest = np.asarray(labels, dtype=object), np.asarray(closest, dtype=object)
    distances = np.asarray(distances, dtype=float)
    strangers = labels == UNKNOWN
    if not strangers.any():
        raise ValueError("learning an open-set threshold needs stranger faces")
    values = np.unique(distances[np.isfinite(distances)])
    candidates = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    # Counts of faces at or below each candidate threshold, from cumulative sums over the sorted distances.
    order = np.argsort(distances, kind="stable")
    below = np.searchsorted(distances[order], candidates, side="right")

    def named(mask: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(mask[order])])[below]

    allowed = named(strangers) / strangers.sum() <= target_false_accept + 1e-12
    beta2 = OBJECTIVES[objective] ** 2
    per_actor = []
    for actor in people_in(labels):
        truth = labels == actor
        said = closest == actor
        per_actor.append(_fbeta(named(said & truth), named(said), int(truth.sum()), beta2))
    scores = np.round(np.mean(per_actor, axis=0), 9) if per_actor else np.zeros(len(candidates))
    if not allowed.any():
        return float(candidates[0])
    best = np.flatnonzero(allowed & (scores == scores[allowed].max()))
    return float(candidates[best[len(best) // 2]])


def learn_band(labels: np.ndarray, closest: np.ndarray, distances: np.ndarray, threshold: float,
               precision: float) -> tuple[float, float]:
    """The band (low, high] around the threshold where faces are answered "can't tell", learned on out-of-fold
    answers: the widest band such that, on the faces inside it, neither answer reaches `precision` - naming them
    all would name fewer than that share right, and calling them all "not one of the four" would be right for
    fewer than that share (strangers) - within the range where the two overlap: from the closest stranger's face
    (or the threshold, if lower) to the farthest actor's face named right (or the threshold, if higher). Past
    that range one answer is right for every face, so the band never reaches there. (threshold, threshold), no
    band, when no band with faces in it has that property.

    Edges lie halfway between consecutive distances (as the threshold's do) or on the threshold itself; the band
    only turns answers into "can't tell", so it never names a stranger the threshold did not. Ties go to the
    lower band.
    """
    labels, closest = np.asarray(labels, dtype=object), np.asarray(closest, dtype=object)
    distances = np.asarray(distances, dtype=float)
    finite = np.isfinite(distances)
    values = np.unique(distances[finite])
    if len(values) == 0:
        return float(threshold), float(threshold)
    edges = np.unique(np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3],
                                      [threshold]]))
    right = (labels == closest) & (labels != UNKNOWN)
    strangers = labels == UNKNOWN
    floor = min([threshold, *distances[strangers & finite]])
    ceiling = max([threshold, *distances[right & finite]])
    lows = edges[(edges <= threshold) & (edges >= edges[edges <= floor].max())]
    highs = edges[(edges >= threshold) & (edges <= edges[edges >= ceiling].min())]
    order = np.argsort(distances[finite], kind="stable")
    sorted_distances = distances[finite][order]

    def at_most(mask: np.ndarray, edge: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(mask[finite][order])])[np.searchsorted(sorted_distances, edge,
                                                                                     side="right")]

    every = np.ones(len(labels), dtype=bool)
    inside = {name: at_most(mask, highs)[None, :] - at_most(mask, lows)[:, None]
              for name, mask in (("faces", every), ("right", right), ("strangers", strangers))}
    n = inside["faces"]
    valid = (n > 0) & (inside["right"] < precision * n) & (inside["strangers"] < precision * n)
    if not valid.any():
        return float(threshold), float(threshold)
    width = np.where(valid, highs[None, :] - lows[:, None], -np.inf)
    low, high = np.unravel_index(np.argmax(np.round(width, 9) == np.round(width.max(), 9)), width.shape)
    return float(lows[low]), float(highs[high])


def _fbeta(tp: np.ndarray, answered: np.ndarray, actual: int, beta2: float) -> np.ndarray:
    """F-beta of one actor from its true matches, the faces given its name and its real faces (arrays work)."""
    tp, answered = np.asarray(tp, dtype=float), np.asarray(answered, dtype=float)
    denominator = (1 + beta2) * tp + beta2 * (actual - tp) + (answered - tp)
    return np.divide((1 + beta2) * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _open_set_fbeta(labels: np.ndarray, answers: np.ndarray, beta: float) -> float:
    """Macro F-beta over the four actors present, on every face: a stranger named as an actor is a false match
    for that actor, an actor answered UNKNOWN or another actor a miss."""
    scores = []
    for actor in people_in(labels):
        truth, said = labels == actor, answers == actor
        if truth.any():
            scores.append(float(_fbeta(int((said & truth).sum()), int(said.sum()), int(truth.sum()), beta**2)))
    return float(np.mean(scores)) if scores else 0.0


def open_set_labels(predicted: np.ndarray, distances: np.ndarray, threshold: float) -> np.ndarray:
    """The predicted actor where the distance is within the threshold, UNKNOWN elsewhere."""
    return np.where(distances <= threshold, predicted, UNKNOWN).astype(object)


def named(answers: np.ndarray) -> np.ndarray:
    """Which answers give a face an actor's name (not UNKNOWN, not CANT_TELL)."""
    return ~np.isin(np.asarray(answers, dtype=object), (UNKNOWN, CANT_TELL))


def open_set_scores(labels: np.ndarray, answers: np.ndarray) -> dict[str, float]:
    """Open-set quality of answers against labels (actors, or UNKNOWN for strangers).

    - open_set_f05, open_set_f1: macro F-beta (beta 0.5, 1) over the four actors on every face: an actor answered
      "unknown" or another actor is a miss, a stranger given an actor's name is a false match for that actor
      (the search objectives);
    - actor_f1: macro-F1 over the four actors on the actors' faces only ("unknown" counts as wrong);
    - actor_accuracy: share of the actors' faces named right;
    - false_accept_rate: share of the strangers' faces given an actor's name.
    """
    labels, answers = np.asarray(labels, dtype=object), np.asarray(answers, dtype=object)
    actors = labels != UNKNOWN
    strangers = ~actors
    present = people_in(labels[actors])
    return {
        **{name: _open_set_fbeta(labels, answers, beta) for name, beta in OBJECTIVES.items()},
        "actor_f1": float(f1_score(labels[actors], answers[actors], labels=present, average="macro",
                                   zero_division=0)),
        "actor_accuracy": float((answers[actors] == labels[actors]).mean()) if actors.any() else 0.0,
        "false_accept_rate": float(named(answers[strangers]).mean()) if strangers.any() else 0.0,
    }


@dataclass(frozen=True)
class Decisions:
    """Per face: the answer (an actor, UNKNOWN, or CANT_TELL for a face narrower than the model judges or with
    a distance inside the band where the four and strangers overlap), the closest actor, its closed-set
    probabilities, the rule's distance, the threshold it was held to and the band (low, high]; `too_small` and
    `blurred` mark the faces answered CANT_TELL for their width and for their sharpness."""

    labels: np.ndarray
    closest: np.ndarray
    proba: np.ndarray
    distances: np.ndarray
    threshold: float
    band: tuple[float, float] | None = None
    too_small: np.ndarray | None = None
    blurred: np.ndarray | None = None


Timer = Callable[[str], AbstractContextManager[Any]]


def untimed(stage: str) -> AbstractContextManager[Any]:
    return nullcontext()


class OpenSetClassifier(ClassifierMixin, BaseEstimator):
    """A fitted closed-set pipeline (features, scaler, classifier) plus an open-set rule and its threshold.

    `gallery` holds the embeddings of the training faces of the four actors (what `nearest_face` compares with)
    and `gallery_labels` their actors. `embedder` maps crops into the embedding space; when the pipeline's own
    features are that embedding, it is computed once per face. `min_face_width`: faces narrower than this (px in
    the photo) are answered CANT_TELL (learned by the search: bbt.model.quality), and so are faces whose distance
    lies in (band_low, band_high], where the actors' and the strangers' faces overlap (learned by the search:
    `learn_band`; None: no band, as in models of before). `min_sharpness`, `min_sharpness_named`: a face less sharp
    than the first (bbt.model.quality.sharpness of its crop) is CANT_TELL instead of UNKNOWN, and less sharp than
    the second CANT_TELL whatever its answer (bbt.model.quality.blurred_cant_tell; learned by the search from
    blurred faces; 0: every face judged, as in models of before).
    """

    def __init__(self, classifier: Pipeline, embedder: Any, rule: str, threshold: float,
                 gallery: np.ndarray, gallery_labels: np.ndarray, target_false_accept: float,
                 min_face_width: int = 0, band_low: float | None = None,
                 band_high: float | None = None, min_sharpness: float = 0.0,
                 min_sharpness_named: float = 0.0) -> None:
        self.classifier = classifier
        self.embedder = embedder
        self.rule = rule
        self.threshold = threshold
        self.gallery = gallery
        self.gallery_labels = gallery_labels
        self.target_false_accept = target_false_accept
        self.min_face_width = min_face_width
        self.band_low = band_low
        self.band_high = band_high
        self.min_sharpness = min_sharpness
        self.min_sharpness_named = min_sharpness_named

    @property
    def band(self) -> tuple[float, float]:
        """(low, high]: the distances answered CANT_TELL; (threshold, threshold) when there is no band."""
        low, high = getattr(self, "band_low", None), getattr(self, "band_high", None)
        return (float(self.threshold if low is None else low), float(self.threshold if high is None else high))

    @property
    def classes_(self) -> np.ndarray:
        return self.classifier.classes_

    def fit(self, X: Any = None, y: Any = None) -> OpenSetClassifier:
        """Assembled fitted by `bbt.pipeline.search`; fitting again learns nothing."""
        return self

    def _shares_embedding(self) -> bool:
        first = self.classifier.steps[0][1]
        return (len(self.classifier.steps) > 1 and type(first) is type(self.embedder)
                and first.get_params() == self.embedder.get_params())

    def decide(self, crops: np.ndarray, timed: Timer = untimed, widths: np.ndarray | None = None,
               sharpness: np.ndarray | None = None) -> Decisions:
        """The open-set answer for each face crop, CANT_TELL where the face's `widths` (px in its photo) are under
        min_face_width or its crop's `sharpness` (bbt.model.quality.sharpness) is too low for its answer (None: not
        measured, judge every face); `timed(stage)` wraps the 'features' and 'classify' work."""
        rule = RULES[self.rule]
        with timed("features"):
            if self._shares_embedding():
                embeddings = features = self.embedder.transform(crops)
                head = self.classifier[1:]
            else:
                embeddings = self.embedder.transform(crops) if rule.uses_embeddings else None
                features = self.classifier[:-1].transform(crops) if len(self.classifier.steps) > 1 else crops
                head = self.classifier[-1]
        with timed("classify"):
            return self._decide(head, features, embeddings, widths, sharpness)

    def decide_embedded(self, embeddings: np.ndarray, widths: np.ndarray | None = None,
                        sharpness: np.ndarray | None = None) -> Decisions:
        """`decide` for faces already described in the embedding space (`bbt review` keeps them), when the
        classifier's own features are that embedding; ValueError for a model on other features (it needs crops)."""
        if not self._shares_embedding():
            raise ValueError(f"the model's features are {type(self.classifier.steps[0][1]).__name__}, not the "
                             "embedding: it answers face crops only")
        return self._decide(self.classifier[1:], embeddings, embeddings, widths, sharpness)

    def _decide(self, head: Any, features: np.ndarray, embeddings: np.ndarray | None, widths: np.ndarray | None,
                sharpness: np.ndarray | None) -> Decisions:
        rule = RULES[self.rule]
        classes = np.asarray(self.classes_)
        proba = head.predict_proba(features)
        predicted = proba.argmax(axis=1)
        gallery_index = np.searchsorted(classes, self.gallery_labels)
        distances = rule.distance(embeddings, proba, predicted, self.gallery, gallery_index)
        closest = classes[predicted]
        labels = open_set_labels(closest, distances, self.threshold)
        low, high = self.band
        labels[(distances > low) & (distances <= high)] = CANT_TELL
        too_small = np.zeros(len(labels), dtype=bool) if widths is None else \
            np.asarray(widths) < self.min_face_width
        blurred = np.zeros(len(labels), dtype=bool) if sharpness is None else \
            blurred_cant_tell(labels, sharpness, getattr(self, "min_sharpness", 0.0),
                              getattr(self, "min_sharpness_named", 0.0)) & (labels != CANT_TELL)
        labels[too_small | blurred] = CANT_TELL
        return Decisions(labels, closest, proba, distances, self.threshold, (low, high), too_small, blurred)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """An actor's name, 'unknown', or 'cant_tell' (a distance in the band), per face crop."""
        return self.decide(X).labels.astype(str)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The closed-set probabilities over the four actors (they say nothing about strangers)."""
        return self.classifier.predict_proba(X)

    def describe(self) -> dict[str, Any]:
        """What serving and the registry show about the open-set rule."""
        return {"rule": self.rule, "threshold": float(self.threshold),
                "target_false_accept": float(self.target_false_accept),
                "min_face_width": int(self.min_face_width),
                "min_sharpness": float(getattr(self, "min_sharpness", 0.0)),
                "min_sharpness_named": float(getattr(self, "min_sharpness_named", 0.0)),
                "band": [round(edge, 6) for edge in self.band],
                "description": RULES[self.rule].description, "gallery_faces": len(self.gallery)}
