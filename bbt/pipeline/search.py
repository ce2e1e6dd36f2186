"""Stage `search`: cross-validate every candidate on the training split, one MLflow child run each.

A candidate is a classifier head on a feature set plus an open-set rule. The folds are grouped by photo
(bbt.model.photo_folds: no photo has faces on both sides). In each fold the head is fitted on the actors' faces of
the other folds; the held-out fold's faces, strangers included, are answered, and the rule's distances are kept.
Each rule's threshold is then learned on those out-of-fold distances for `search.target_false_accept`, and the
candidate is scored on `search.objective` at that threshold. The winner's band of "can't tell" around its
threshold (bbt.model.openset.learn_band) is learned on the same distances.

The feature transformers are stateless, so cross-validating the scaler and classifier on the cached feature
matrix is the same as cross-validating the whole pipeline, at a fraction of the cost. Everything written to DVC
outputs is a function of the inputs; timings go to MLflow only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict

import joblib
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline

from bbt import CANT_TELL, UNKNOWN, artifacts
from bbt.artifacts import load_faces, load_split
from bbt.config import Params
from bbt.errors import DataError
from bbt.model.candidates import Candidate, Head, candidates
from bbt.model.feature_sets import build_features
from bbt.model.openset import (
    EMBEDDING_SPACE,
    RULES,
    OpenSetClassifier,
    learn_band,
    learn_threshold,
    open_set_labels,
    open_set_scores,
    people_in,
)
from bbt.model.photo_folds import Fold, photo_folds
from bbt.model.quality import (
    BLURS,
    WIDTHS,
    SharpnessScores,
    WidthScores,
    blur,
    least_judged_sharpness,
    sharpness,
    sharpness_scores,
    shrink,
    smallest_judged_width,
    width_scores,
)
from bbt.pipeline.progress import progress
from bbt.registry.tracking import MODEL_MD5_TAG, corrections_hash, data_hash, git_commit, setup_tracking

log = logging.getLogger(__name__)
# Scores equal to this many decimals are a tie (float noise must not pick the winner).
TIE_DECIMALS = 9
MIN_STRANGERS = 5


def search_params(params: Params) -> dict[str, str]:
    """What the search reads from params.yaml, flattened to `section.key` strings, as MLflow params."""
    flat: dict[str, str] = {}
    for section in ("featurize", "search"):
        for key, value in asdict(getattr(params, section)).items():
            flat[f"{section}.{key}"] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return flat


def out_of_fold(head: Head, X: np.ndarray, E: np.ndarray, y: np.ndarray, folds: list[Fold], seed: int,
                rules: tuple[str, ...], answered_as: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Out-of-fold closed-set answers, every rule's distances, per-fold closed-set macro-F1 and fit time.

    `folds` come from bbt.model.photo_folds: each trains on actors' faces and answers faces of photos it never
    saw. An actor's face is answered by one fold; a stranger's by every fold that may answer it, keeping the
    smallest distance (it counts as let through when any of them would let it through). `answered_as`: the
    features and embeddings the answered faces are read from (the same faces shrunk, bbt.model.quality), if not
    X, E.
    """
    X_answered, E_answered = answered_as if answered_as is not None else (X, E)
    answers = {rule: np.empty(len(y), dtype=object) for rule in rules}
    distances = {rule: np.full(len(y), np.inf) for rule in rules}
    seen = np.zeros(len(y), dtype=bool)
    fold_f1, fit_seconds = [], []
    for train, answered in folds:
        start = time.perf_counter()
        model = head.head(seed).fit(X[train], y[train])
        fit_seconds.append(time.perf_counter() - start)
        proba = model.predict_proba(X_answered[answered])
        index = proba.argmax(axis=1)
        named = model.classes_[index]
        gallery_index = np.searchsorted(model.classes_, y[train])
        for rule in rules:
            found = RULES[rule].distance(E_answered[answered], proba, index, E[train], gallery_index)
            closer = (found < distances[rule][answered]) | ~seen[answered]
            distances[rule][answered[closer]] = found[closer]
            answers[rule][answered[closer]] = named[closer]
        seen[answered] = True
        actors = y[answered] != UNKNOWN
        fold_f1.append(f1_score(y[answered][actors], named[actors], average="macro", zero_division=0))
    return {"answers": answers, "distances": distances, "fold_f1": fold_f1, "fit_seconds": fit_seconds}


def score_rule(y: np.ndarray, predicted: np.ndarray, distances: np.ndarray, target: float,
               objective: str) -> dict[str, float]:
    """Learn the rule's threshold on out-of-fold distances, then score the answers it gives."""
    threshold = learn_threshold(y, predicted, distances, target, objective)
    scores = open_set_scores(y, open_set_labels(predicted, distances, threshold))
    return {"threshold": threshold, **{f"cv_{k}": v for k, v in scores.items()}}


def per_person(y: np.ndarray, answers: np.ndarray) -> dict[str, dict[str, float]]:
    """Each person's own cross-validated figures from out-of-fold open-set answers: recall (their faces named
    them), precision (faces named them that are theirs, strangers included) and their face count."""
    figures = {}
    for person in people_in(y):
        theirs, said = y == person, answers == person
        figures[person] = {"recall": round(float((answers[theirs] == person).mean()), 4),
                           "precision": round(float((said & theirs).sum() / said.sum()), 4) if said.any() else 0.0,
                           "faces": int(theirs.sum())}
    return figures


def strangers_like(y: np.ndarray, E: np.ndarray, share: float = 0.9) -> dict[str, np.ndarray]:
    """Per person, the strangers' faces (indices into y) whose nearest face in embedding space is that person's and
    is nearer than `share` of the person's own faces are to their nearest other face of the person: most likely the
    person's own faces reviewed as `stranger`. Each one holds the single open-set threshold below it (the strangers
    given a name are capped), so every person's recall drops; `run_search` names them for the review."""
    people = np.flatnonzero(~np.isin(y, [UNKNOWN]))
    strangers = np.flatnonzero(y == UNKNOWN)
    found: dict[str, np.ndarray] = {}
    if not len(people):
        return found
    to_people = np.linalg.norm(E[strangers][:, None, :] - E[people][None, :, :], axis=2)
    nearest = y[people][to_people.argmin(axis=1)] if len(strangers) else np.array([], dtype=object)
    distance = to_people.min(axis=1) if len(strangers) else np.array([])
    for person in people_in(y):
        theirs = E[y == person]
        if len(theirs) < 2:
            continue
        own = np.linalg.norm(theirs[:, None, :] - theirs[None, :, :], axis=2)
        np.fill_diagonal(own, np.inf)
        found[person] = strangers[(nearest == person) & (distance <= np.quantile(own.min(axis=1), share))]
    return found


def ranking_key(row: dict, objective: str, candidate: Candidate) -> tuple:
    """Best objective first, then fewer strangers let through, then the simpler candidate (bbt.model.candidates)."""
    return (-round(row[f"cv_{objective}"], TIE_DECIMALS), round(row["cv_false_accept_rate"], TIE_DECIMALS),
            candidate.simplicity)


def run_search(params: Params) -> dict:
    """Search every candidate, refit the best on the training split, save it with the leaderboard."""
    faces = load_faces()
    train, _ = load_split()
    y = faces["labels"][train].astype(object)
    n_strangers = int((y == UNKNOWN).sum())
    if n_strangers < MIN_STRANGERS:
        raise DataError(f"the training split has {n_strangers} stranger faces; learning when to answer "
                        f"'unknown' needs at least {MIN_STRANGERS}: review rejected boxes as `stranger` in "
                        f"{params.data.corrections} (see `dvc repro audit`, reports/rejected_review.png)")
    grid = candidates(params.search, params.featurize.feature_sets)
    rules = params.search.open_set_rules
    features = {fs: artifacts.load_features(fs)[train] for fs in params.featurize.feature_sets}
    E = artifacts.load_features(EMBEDDING_SPACE)[train]
    folds = photo_folds(y, faces["images"][train], params.search.cv_folds, params.search.seed)
    heads = list(dict.fromkeys(c.head for c in grid))
    setup_tracking()
    rows: dict[Candidate, dict] = {}
    answered: dict[Candidate, tuple[np.ndarray, np.ndarray]] = {}  # out-of-fold answers and distances
    with mlflow.start_run(run_name=f"grid-search-{time.strftime('%Y%m%d-%H%M%S')}"):
        mlflow.set_tags({"stage": "search", "git_commit": git_commit(), "data_hash": data_hash(),
                         "corrections_hash": corrections_hash(params.data.corrections),
                         "objective": params.search.objective})
        mlflow.log_params(search_params(params))
        mlflow.log_params({"n_candidates": len(grid), "n_train_faces": len(train),
                           "n_train_strangers": n_strangers})
        # Counted in candidates (a head with each open-set rule), as the log lines and the leaderboard count them;
        # one cross-validation per head serves all its rules, so the count moves by len(rules) at a time.
        with progress("search: cross-validating candidates", total=len(grid)) as advance:
            for head in heads:
                oof = out_of_fold(head, features[head.feature_set], E, y, folds, params.search.seed, rules)
                for rule in rules:
                    candidate = Candidate(head, rule)
                    row = {**score_rule(y, oof["answers"][rule], oof["distances"][rule],
                                        params.search.target_false_accept, params.search.objective),
                           "cv_f1_macro_mean": float(np.mean(oof["fold_f1"])),
                           "cv_f1_macro_std": float(np.std(oof["fold_f1"]))}
                    rows[candidate] = row
                    answered[candidate] = (oof["answers"][rule], oof["distances"][rule])
                    with mlflow.start_run(run_name=candidate.name, nested=True):
                        mlflow.set_tags({"candidate": candidate.name, "stage": "search-candidate"})
                        mlflow.log_params({"feature_set": head.feature_set, "family": head.family,
                                           "open_set_rule": rule, **dict(head.hyperparameters)})
                        mlflow.log_metrics({**row, "fit_time_s": float(np.mean(oof["fit_seconds"]))})
                    log.info("search: %-72s %s %.3f, false accepts %.3f", candidate.name,
                             params.search.objective, row[f"cv_{params.search.objective}"],
                             row["cv_false_accept_rate"])
                    advance()
        order = sorted(rows, key=lambda c: ranking_key(rows[c], params.search.objective, c))
        best, best_scores = order[0], rows[order[0]]
        people = per_person(y, open_set_labels(*answered[best], best_scores["threshold"]))
        alike = strangers_like(y, E)
        for person, figures in people.items():
            figures["strangers_as_close"] = len(alike.get(person, ()))
        warn_strangers_like(alike, faces, train, params.data.corrections)
        mlflow.log_metrics({f"cv_{k}_{person}": v for person, f in people.items() for k, v in f.items()
                            if k != "faces"})
        leaderboard = pd.DataFrame([{"candidate": c.name, **rows[c]} for c in order])
        artifacts.LEADERBOARD.parent.mkdir(parents=True, exist_ok=True)
        leaderboard.to_csv(artifacts.LEADERBOARD, index=False)
        mlflow.log_artifact(str(artifacts.LEADERBOARD))
        # The parent run carries the winner's scores under the children's names, so comparing runs lines up.
        mlflow.log_metrics(best_scores)
        mlflow.set_tag("best_candidate", best.name)
        widths = shrunk_width_scores(best, faces["crops"][train], features[best.head.feature_set], E, y, folds,
                                     best_scores["threshold"], params)
        min_face_width = smallest_judged_width(widths, best_scores["cv_actor_accuracy"],
                                               params.search.min_width_recall, params.search.target_false_accept)
        sharp_bins = blurred_sharpness_scores(best, faces["crops"][train], features[best.head.feature_set], E, y,
                                              folds, best_scores["threshold"], params)
        min_sharpness, min_sharpness_named = least_judged_sharpness(
            sharp_bins, best_scores["cv_actor_accuracy"], params.search.min_width_recall,
            params.search.band_precision, params.search.target_false_accept)
        oof = out_of_fold(best.head, features[best.head.feature_set], E, y, folds, params.search.seed, (best.rule,))
        band = learn_band(y, oof["answers"][best.rule], oof["distances"][best.rule], best_scores["threshold"],
                          params.search.band_precision)
        best_scores = {**best_scores, "min_face_width": min_face_width, "min_sharpness": min_sharpness,
                       "min_sharpness_named": min_sharpness_named, "band_low": band[0], "band_high": band[1],
                       **band_scores(y, oof["answers"][best.rule], oof["distances"][best.rule],
                                     best_scores["threshold"], band)}
        mlflow.log_metrics({k: v for k, v in best_scores.items() if k.startswith(("band_", "cv_band", "min_"))})
        record_widths(widths, min_face_width)
        record_sharpness(sharp_bins, min_sharpness, min_sharpness_named)
        model = refit(best, features[best.head.feature_set], E, y, best_scores["threshold"], min_face_width, band,
                      params, (min_sharpness, min_sharpness_named))
        model_md5 = save_model(model, best, best_scores, params, faces, people)
        mlflow.set_tag(MODEL_MD5_TAG, model_md5)
    summary = {"best_candidate": best.name, "n_candidates": len(grid), "objective": params.search.objective,
               **best_scores, "cv_per_person": people}
    artifacts.write_json(artifacts.SEARCH_REPORT, summary)
    # The DVC metric: the winner's CV objective (under its name), actor macro-F1, false accepts and threshold.
    objective = params.search.objective
    artifacts.write_json(artifacts.SEARCH_METRICS, {
        objective: round(best_scores[f"cv_{objective}"], 4), "actor_f1": round(best_scores["cv_actor_f1"], 4),
        "false_accept_rate": round(best_scores["cv_false_accept_rate"], 4),
        "threshold": round(best_scores["threshold"], 4)})
    log.info("search: 'can't tell' between distances %.3f and %.3f (%.3f of the actors' CV faces, %.3f of the "
             "strangers')", *band, best_scores["cv_band_actor_share"], best_scores["cv_band_stranger_share"])
    log.info("search: best %s, CV %s %.3f, false accepts %.3f at threshold %.3f", best.name,
             params.search.objective, best_scores[f"cv_{params.search.objective}"],
             best_scores["cv_false_accept_rate"], best_scores["threshold"])
    return summary


def warn_strangers_like(alike: dict[str, np.ndarray], faces: dict, train: np.ndarray, corrections: str) -> None:
    """A warning per person with strangers' faces as close as their own (strangers_like): the faces to look at."""
    for person, found in alike.items():
        if len(found):
            where = "; ".join(f"{faces['images'][train][i]} box {list(map(int, faces['boxes'][train][i]))}"
                              for i in found)
            log.warning("search: %d face(s) reviewed as strangers are as close to %s's faces as %s's own median "
                        "face: %s. If they are %s, accept them as %s in `bbt review` (%s): as strangers they hold "
                        "the open-set threshold below them, and every person's recall with it", len(found), person,
                        person, where, person, person, corrections)


def shrunk_width_scores(best: Candidate, crops: np.ndarray, X: np.ndarray, E: np.ndarray, y: np.ndarray,
                        folds: list[Fold], threshold: float,
                        params: Params) -> list[WidthScores]:
    """The winner's out-of-fold answers with every held-out face shrunk to each width of quality.WIDTHS."""
    featurizer = build_features(best.head.feature_set, params.featurize).fit(None)
    embedder = build_features(EMBEDDING_SPACE, params.featurize).fit(None)
    scores = []
    with progress("search: answering shrunk faces", total=len(WIDTHS)) as advance:
        for width in WIDTHS:
            shrunk = shrink(crops, width)
            E_shrunk = embedder.transform(shrunk)
            X_shrunk = E_shrunk if best.head.feature_set == EMBEDDING_SPACE else featurizer.transform(shrunk)
            oof = out_of_fold(best.head, X, E, y, folds, params.search.seed, (best.rule,), (X_shrunk, E_shrunk))
            answers = open_set_labels(oof["answers"][best.rule], oof["distances"][best.rule], threshold)
            scores.append(width_scores(width, y, answers))
            advance()
    return scores


def blurred_sharpness_scores(best: Candidate, crops: np.ndarray, X: np.ndarray, E: np.ndarray, y: np.ndarray,
                             folds: list[Fold], threshold: float, params: Params) -> list[SharpnessScores]:
    """The winner's out-of-fold answers with every held-out face blurred by each sigma of quality.BLURS, pooled
    by the blurred crops' measured sharpness."""
    featurizer = build_features(best.head.feature_set, params.featurize).fit(None)
    embedder = build_features(EMBEDDING_SPACE, params.featurize).fit(None)
    measured, labels, answered = [], [], []
    with progress("search: answering blurred faces", total=len(BLURS)) as advance:
        for sigma in BLURS:
            blurred = blur(crops, sigma)
            if sigma:
                E_blurred = embedder.transform(blurred)
                X_blurred = E_blurred if best.head.feature_set == EMBEDDING_SPACE else featurizer.transform(blurred)
            else:  # as they are: the features already computed
                X_blurred, E_blurred = X, E
            oof = out_of_fold(best.head, X, E, y, folds, params.search.seed, (best.rule,), (X_blurred, E_blurred))
            answered.append(open_set_labels(oof["answers"][best.rule], oof["distances"][best.rule], threshold))
            measured.append(sharpness(blurred))
            labels.append(y)
            advance()
    return sharpness_scores(np.concatenate(measured), np.concatenate(labels), np.concatenate(answered))


def record_sharpness(bins: list[SharpnessScores], min_sharpness: float, min_sharpness_named: float) -> None:
    """The figures by sharpness of the blurred faces, as a report and in the search's MLflow run."""
    table = pd.DataFrame([b.as_row() for b in bins])
    artifacts.SHARPNESS_CSV.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(artifacts.SHARPNESS_CSV, index=False)
    mlflow.log_artifact(str(artifacts.SHARPNESS_CSV))
    mlflow.log_metrics({f"sharpness_from_{b.low:g}_{k}": v for b in bins for k, v in b.as_row().items()
                        if k not in ("sharpness_low", "sharpness_high")})
    log.info("search: 'not one of the four' from sharpness %.4f, names from %.4f (blurred faces: %s)",
             min_sharpness, min_sharpness_named,
             ", ".join(f"from {b.low:g} recall {b.actor_recall:.2f} names right {b.named_precision:.2f}"
                       for b in bins))


def record_widths(scores: list[WidthScores], min_face_width: int) -> None:
    """The figures by face width, as a report and in the search's MLflow run."""
    table = pd.DataFrame([s.as_row() for s in scores])
    artifacts.FACE_WIDTH_CSV.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(artifacts.FACE_WIDTH_CSV, index=False)
    mlflow.log_artifact(str(artifacts.FACE_WIDTH_CSV))
    mlflow.log_metrics({f"width_{s.width}px_{k}": v for s in scores for k, v in s.as_row().items() if k != "width"})
    log.info("search: faces are judged from %d px wide (shrunk faces: %s)", min_face_width,
             ", ".join(f"{s.width} px recall {s.actor_recall:.2f} misnamed {s.misnamed:.2f}" for s in scores))


def band_scores(y: np.ndarray, predicted: np.ndarray, distances: np.ndarray, threshold: float,
                band: tuple[float, float]) -> dict[str, float]:
    """The CV faces the band answers "can't tell": actors' and strangers' shares, and the open-set scores left."""
    inside = (distances > band[0]) & (distances <= band[1])
    answers = open_set_labels(predicted, distances, threshold)
    answers[inside] = CANT_TELL
    actors = y != UNKNOWN
    return {"cv_band_actor_share": float(inside[actors].mean()),
            "cv_band_stranger_share": float(inside[~actors].mean()) if (~actors).any() else 0.0,
            **{f"cv_banded_{k}": v for k, v in open_set_scores(y, answers).items()}}


def refit(best: Candidate, X: np.ndarray, E: np.ndarray, y: np.ndarray, threshold: float, min_face_width: int,
          band: tuple[float, float], params: Params,
          sharpness_edges: tuple[float, float] = (0.0, 0.0)) -> OpenSetClassifier:
    """Fit the winner's head on the actors' training faces, put its feature transformer in front, and wrap it
    with its open-set rule: the learned threshold and the actors' training embeddings as the gallery."""
    actors = y != UNKNOWN
    head = best.head.head(params.search.seed).fit(X[actors], y[actors].astype(str))
    features = build_features(best.head.feature_set, params.featurize).fit(None)
    classifier = Pipeline([("features", features), *head.steps])
    return OpenSetClassifier(classifier, build_features(EMBEDDING_SPACE, params.featurize).fit(None), best.rule,
                             threshold, E[actors].astype(np.float32), y[actors].astype(str),
                             params.search.target_false_accept, min_face_width, *band, *sharpness_edges)


def save_model(model: OpenSetClassifier, best: Candidate, scores: dict, params: Params, faces: dict,
               people: dict[str, dict[str, float]]) -> str:
    """The refitted model and what serving needs to know about it (detector, crop size, classes, open-set rule);
    returns the model file's md5, its identity in MLflow."""
    artifacts.MODEL.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, artifacts.MODEL)
    info = {
        "candidate": best.name,
        "feature_set": best.head.feature_set,
        "family": best.head.family,
        "hyperparameters": dict(best.head.hyperparameters),
        "objective": params.search.objective,
        f"cv_{params.search.objective}": scores[f"cv_{params.search.objective}"],
        "cv_false_accept_rate": scores["cv_false_accept_rate"],
        "cv_f1_macro_std": scores["cv_f1_macro_std"],
        "cv_per_person": people,
        "classes": [str(c) for c in model.classes_],
        "open_set": model.describe(),
        **json.loads(str(faces["settings"])),
    }
    artifacts.MODEL_INFO.write_text(json.dumps(info, indent=2) + "\n")
    return hashlib.md5(artifacts.MODEL.read_bytes()).hexdigest()
