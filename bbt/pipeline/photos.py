"""The grouped evaluation: the champion's recipe judged on every reviewed face, by photo, as users see it.

Every reviewed face the detector finds in the dataset's photos (the actors' accepted faces and the strangers', as
`clean` sorts them from annotations.csv and review/corrections.csv; never the detections nobody reviewed) is
answered once by a model that saw no face of its photo: cross-validation grouped by photo (bbt.model.photo_folds).
In each outer fold the champion's candidate (feature set, family, hyperparameters, open-set rule) is fitted on the
other folds' actors, and its threshold and band of "can't tell" are learned as the search learns them, by grouped
CV inside those folds only. The faces narrower than the champion's min_face_width, or too blurred for their
answer (its sharpness edges), are "can't tell" (no reviewed face is that narrow or that blurred today: the
by-width table shows the widths, reports/photos.json the sharpness).

Figures: per face width bucket; the photo-level share of photos in which the actor of the photo's folder is named;
actors named as another actor apart from actors answered "not one of the four" or "can't tell"; strangers given a
name; the recall / false-accept curve; the most-confused actor pairs with their margins.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd

from bbt import CANT_TELL, UNKNOWN
from bbt.config import SearchParams
from bbt.model.candidates import Candidate
from bbt.model.openset import RULES, learn_band, learn_threshold, open_set_labels, open_set_scores, people_in
from bbt.model.photo_folds import folder_actor, grouped_split, photo_folds
from bbt.model.quality import blurred_cant_tell
from bbt.pipeline.search import out_of_fold

# A learned metric (benchmarks/recall_variants.py): fitted on a fold's actors' embeddings and their labels, it
# returns the map every embedding of that fold is compared in.
Metric = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]

# Face width buckets (px in the photo): [low, high).
WIDTH_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("under_32", 0, 32), ("32_64", 32, 64), ("64_128", 64, 128), ("128_plus", 128, np.inf))


def grouped_answers(candidate: Candidate, X: np.ndarray, E: np.ndarray, labels: np.ndarray, photos: np.ndarray,
                    widths: np.ndarray, min_face_width: int, params: SearchParams,
                    metric: Metric | None = None, sharpness: np.ndarray | None = None,
                    sharpness_edges: tuple[float, float] = (0.0, 0.0)) -> pd.DataFrame:
    """One row per reviewed face (labels != ""): its label, photo, width, sharpness, outer fold, the closest actor,
    its distance, the fold's threshold and band, the answer, and its distance to each actor's nearest training
    face. `metric`: a map of the embeddings learned on each outer fold's training actors (None: the embeddings as
    they are). `sharpness`: each face crop's (bbt.model.quality.sharpness; None: not measured), answered by the
    champion's `sharpness_edges` (min_sharpness, min_sharpness_named: bbt.model.quality.blurred_cant_tell)."""
    labels, photos = np.asarray(labels, dtype=object), np.asarray(photos, dtype=object)
    sharp = np.full(len(labels), np.inf) if sharpness is None else np.asarray(sharpness, dtype=np.float64)
    E_given = E
    rows = []
    for fold, (rest, held) in enumerate(grouped_split(labels, photos, params.cv_folds, params.seed)):
        if metric is not None:
            fitted_on = rest[labels[rest] != UNKNOWN]
            E = metric(E_given[fitted_on], labels[fitted_on].astype(str))(E_given)
        inner = photo_folds(labels[rest], photos[rest], params.cv_folds, params.seed)
        oof = out_of_fold(candidate.head, X[rest], E[rest], labels[rest], inner, params.seed, (candidate.rule,))
        closest, distances = oof["answers"][candidate.rule], oof["distances"][candidate.rule]
        threshold = learn_threshold(labels[rest], closest, distances, params.target_false_accept, params.objective)
        band = learn_band(labels[rest], closest, distances, threshold, params.band_precision)
        train = rest[labels[rest] != UNKNOWN]
        model = candidate.head.head(params.seed).fit(X[train], labels[train].astype(str))
        proba = model.predict_proba(X[held])
        index = proba.argmax(axis=1)
        gallery_index = np.searchsorted(model.classes_, labels[train].astype(str))
        found = RULES[candidate.rule].distance(E[held], proba, index, E[train], gallery_index)
        named = model.classes_[index].astype(object)
        answers = open_set_labels(named, found, threshold)
        answers[(found > band[0]) & (found <= band[1])] = CANT_TELL
        answers[(widths[held] < min_face_width) | blurred_cant_tell(answers, sharp[held], *sharpness_edges)] = \
            CANT_TELL
        to_actor = {actor: np.linalg.norm(E[held][:, None, :] - E[train][labels[train] == actor][None], axis=2)
                    .min(axis=1) for actor in model.classes_}
        for i, face in enumerate(held):
            rows.append({"face": int(face), "label": labels[face], "photo": photos[face], "width": int(widths[face]),
                         "sharpness": round(float(sharp[face]), 6),
                         "fold": fold, "closest": named[i], "distance": float(found[i]), "threshold": threshold,
                         "band_low": band[0], "band_high": band[1], "answer": answers[i],
                         **{f"to_{actor}": float(to_actor[actor][i]) for actor in model.classes_}})
    return pd.DataFrame(rows).sort_values("face", kind="stable").reset_index(drop=True)


def named(answers: pd.Series) -> pd.Series:
    """Which answers give a face a person's name (not "not one of them", not "can't tell")."""
    return ~answers.isin((UNKNOWN, CANT_TELL))


def face_figures(table: pd.DataFrame) -> dict[str, float | int | None]:
    """Actors named right, named as another actor, answered "not one of the four" or "can't tell"; strangers
    given a name or "can't tell" (shares of their faces); open-set scores."""
    actors, strangers = table[table.label != UNKNOWN], table[table.label == UNKNOWN]

    def share(part: pd.DataFrame, mask: pd.Series) -> float | None:
        return round(float(mask.mean()), 4) if len(part) else None  # no faces: no figure (JSON null)

    figures = {"actor_faces": len(actors), "stranger_faces": len(strangers),
               "actor_recall": share(actors, actors.answer == actors.label),
               "actor_as_other_actor": share(actors, named(actors.answer) & (actors.answer != actors.label)),
               "actor_as_unknown": share(actors, actors.answer == UNKNOWN),
               "actor_cant_tell": share(actors, actors.answer == CANT_TELL),
               "stranger_false_accept": share(strangers, named(strangers.answer)),
               "stranger_cant_tell": share(strangers, strangers.answer == CANT_TELL)}
    if len(actors) and len(strangers):
        scores = open_set_scores(table.label.to_numpy(object), table.answer.to_numpy(object))
        figures |= {k: round(v, 4) for k, v in scores.items() if k in ("actor_f1", "open_set_f05")}
    return figures


def by_width(table: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """face_figures per width bucket (WIDTH_BUCKETS); a bucket without reviewed faces says so by its counts."""
    return {name: face_figures(table[(table.width >= low) & (table.width < high)])
            for name, low, high in WIDTH_BUCKETS}


def photo_figures(table: pd.DataFrame) -> dict[str, float | int | None]:
    """Photo-level: of the photos holding a reviewed face of their folder's actor, the share in which that
    actor is named on some face (overall and per folder); and, as the issue's web test counted, of every photo
    with a reviewed face."""
    folder = table.photo.map(folder_actor)
    named_there = (table.answer == folder).groupby(table.photo).any()
    shows_actor = (table.label == folder).groupby(table.photo).any()
    folders = named_there.index.map(folder_actor)
    per_actor = {actor: named_there[shows_actor & (folders == actor)] for actor in people_in(table.label)}
    return {"photos": int(shows_actor.sum()),
            "photo_recall": round(float(named_there[shows_actor].mean()), 4) if shows_actor.any() else None,
            "photos_with_a_face": len(named_there),
            "photo_recall_any_face": round(float(named_there.mean()), 4),
            **{f"photo_recall_{actor}": round(float(found.mean()), 4) for actor, found in per_actor.items()
               if len(found)}}


def confused_pairs(table: pd.DataFrame, top: int = 6) -> list[dict]:
    """Per ordered actor pair (actor, other): the actor's faces the classifier put closest to `other`, and the
    margin in embedding space (distance to other's nearest training face - to the actor's own), smallest first."""
    actors = table[table.label != UNKNOWN]
    rows = []
    people = people_in(actors.label)
    for actor in people:
        own = actors[actors.label == actor]
        for other in people:
            if other == actor or own.empty or f"to_{other}" not in own:
                continue
            margin = own[f"to_{other}"] - own[f"to_{actor}"]
            rows.append({"actor": actor, "other": other, "faces": len(own),
                         "closest_to_other": int((own.closest == other).sum()),
                         "named_other": int((own.answer == other).sum()),
                         "min_margin": round(float(margin.min()), 4), "median_margin": round(float(margin.median()), 4)})
    return sorted(rows, key=lambda r: (-r["closest_to_other"], r["min_margin"], r["actor"], r["other"]))[:top]


def recall_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Actor recall (closest actor right and distance within) against the strangers' false-accept rate, at every
    distance that changes them, over the out-of-fold distances of every fold."""
    actors, strangers = table.label != UNKNOWN, table.label == UNKNOWN
    right = (table.closest == table.label) & actors
    rows = []
    for threshold in np.unique(np.concatenate([[0.0], table.distance.to_numpy(float)])):
        within = table.distance <= threshold
        rows.append({"threshold": round(float(threshold), 4),
                     "false_accept_rate": round(float((within & strangers).sum() / max(strangers.sum(), 1)), 4),
                     "actor_recall": round(float((within & right).sum() / max(actors.sum(), 1)), 4)})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> dict:
    """Every figure of the grouped evaluation (reports/photos.json)."""
    folds = table.groupby("fold")[["threshold", "band_low", "band_high"]].first()
    return {"faces": face_figures(table), "photos": photo_figures(table), "by_width": by_width(table),
            "confused_pairs": confused_pairs(table),
            "sharpness": {"least": round(float(table.sharpness.min()), 4),
                          "percentile_5": round(float(table.sharpness.quantile(0.05)), 4)}
            if "sharpness" in table and np.isfinite(table.sharpness).all() else {},
            "folds": {"thresholds": [round(float(v), 4) for v in folds.threshold],
                      "bands": [[round(float(a), 4), round(float(b), 4)] for a, b in zip(folds.band_low,
                                                                                           folds.band_high)]},
            "answers": dict(sorted(Counter(f"{label} -> {answer}" for label, answer in
                                           zip(table.label, table.answer)).items()))}


def headline(summary: dict) -> dict:
    """The DVC metric (metrics/photos.json): faces and strangers judged, actor macro-F1, strangers named, and the
    photo-level recall; columns shared with the other stages' metrics where the figure is the same kind."""
    faces = summary["faces"]
    return {"faces": faces["actor_faces"], "strangers": faces["stranger_faces"], "actor_f1": faces.get("actor_f1"),
            "false_accept_rate": faces["stranger_false_accept"], "photo_recall": summary["photos"]["photo_recall"]}


def flat_metrics(summary: dict) -> dict[str, float]:
    """Every number of the summary under one MLflow metric name each (photos_<section>_<figure>)."""
    flat: dict[str, float] = {}
    for section in ("faces", "photos"):
        flat |= {f"photos_{section}_{k}": float(v) for k, v in summary[section].items() if v is not None}
    for bucket, figures in summary["by_width"].items():
        flat |= {f"photos_width_{bucket}_{k}": float(v) for k, v in figures.items() if v is not None}
    for pair in summary["confused_pairs"]:
        flat[f"photos_margin_{pair['actor']}_{pair['other']}"] = float(pair["min_margin"])
    return {k: v for k, v in flat.items() if np.isfinite(v)}
