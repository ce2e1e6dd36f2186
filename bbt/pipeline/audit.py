"""Stage `audit`: help the second review (review/corrections.csv, which `clean` applies).

- Accepted faces whose label the rest of the data disagrees with: every face is predicted by models that never
  saw it (repeated stratified K-fold); a face that most of those predictions give to another actor is a suspect
  (a mislabelled box, or a rare kind of picture such as a drawing).
- Boxes the first review rejected: each gets a proposed verdict from the open-set rule (bbt.model.openset), the
  nearest actor in face-embedding space and its distance, "stranger" beyond a threshold learned from the faces
  already reviewed. A person checks the contact sheets and records the verdicts.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bbt import UNKNOWN, artifacts
from bbt.artifacts import load_faces
from bbt.config import AuditParams, DataParams, FeaturizeParams, SearchParams
from bbt.errors import DataError
from bbt.model.openset import EMBEDDING_SPACE, RULES, learn_threshold, people_in

log = logging.getLogger(__name__)

COLUMNS = ["image", "x", "y", "w", "h", "label", "predicted", "agreement", "reviewed_in"]
REJECTED_COLUMNS = ["image", "x", "y", "w", "h", "nearest_actor", "distance", "proposal", "second_review"]


def out_of_fold_agreement(
    X: np.ndarray, y: np.ndarray, folds: int, repeats: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per face: the share of out-of-fold predictions that match its label, and the most frequent prediction.

    With fewer faces of an actor than folds, it uses as many folds as that actor has faces (at least 2)."""
    smallest = int(min(np.unique(y, return_counts=True)[1]))
    if smallest < 2:
        raise DataError(f"the audit needs at least 2 faces of every actor, the rarest has {smallest}")
    if smallest < folds:
        log.warning("audit: %d folds, since the rarest actor has only %d faces", smallest, smallest)
        folds = smallest
    model = make_pipeline(StandardScaler(), SVC(C=1.0, kernel="rbf"))
    votes = np.stack([
        cross_val_predict(model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed + repeat))
        for repeat in range(repeats)
    ])
    agreement = (votes == y).mean(axis=0)
    predicted = np.array([pd.Series(column).mode().iloc[0] for column in votes.T])
    return agreement, predicted


def contact_sheet(crops: np.ndarray, captions: list[str], columns: int = 6, tile: int = 160) -> np.ndarray:
    """The crops side by side, each captioned, as one BGR image."""
    import cv2

    columns = max(1, min(columns, len(crops)))
    rows = -(-len(crops) // columns)
    sheet = np.full((rows * (tile + 22), columns * tile, 3), 255, np.uint8)
    for index, (crop, caption) in enumerate(zip(crops, captions)):
        top, left = (index // columns) * (tile + 22), (index % columns) * tile
        sheet[top:top + tile, left:left + tile] = cv2.resize(crop, (tile, tile))
        cv2.putText(sheet, caption, (left + 3, top + tile + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return sheet


def nearest_actor(embeddings: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per face, the actor of the closest gallery face and that distance (the `nearest_face` rule asked for every
    actor); `exclude[i]` is a gallery index face i may not match (itself), or -1."""
    rule = RULES["nearest_face"].distance
    classes = np.array(people_in(gallery_labels))
    index = np.searchsorted(classes, gallery_labels)
    per_actor = []
    for actor in range(len(classes)):
        if exclude is None:
            per_actor.append(rule(embeddings, None, np.full(len(embeddings), actor), gallery, index))
            continue
        distances = np.empty(len(embeddings))
        for i, skip in enumerate(exclude):
            keep = np.arange(len(gallery)) != skip
            distances[i] = rule(embeddings[i:i + 1], None, np.array([actor]), gallery[keep], index[keep])[0]
        per_actor.append(distances)
    stacked = np.stack(per_actor, axis=1)
    return classes[stacked.argmin(axis=1)], stacked.min(axis=1)


def propose_verdicts(faces: dict, embeddings: np.ndarray, search: SearchParams) -> tuple[pd.DataFrame, float | None]:
    """A proposed verdict for every box the first review rejected, and the distance threshold behind it.

    The threshold is learned like the model's (bbt.model.openset.learn_threshold) on the faces already reviewed: each
    accepted face against the other accepted faces, each stranger against all of them."""
    labels, status = faces["labels"], faces["status"]
    accepted = np.flatnonzero(status == "accepted")
    gallery, gallery_labels = embeddings[accepted], labels[accepted]
    actor_closest, actor_distances = nearest_actor(gallery, gallery, gallery_labels,
                                                   exclude=np.arange(len(accepted)))
    strangers = np.flatnonzero(labels == UNKNOWN)
    stranger_closest, stranger_distances = nearest_actor(embeddings[strangers], gallery, gallery_labels)
    threshold = learn_threshold(np.concatenate([gallery_labels, labels[strangers]]),
                                np.concatenate([actor_closest, stranger_closest]),
                                np.concatenate([actor_distances, stranger_distances]),
                                search.target_false_accept, search.objective) if len(strangers) else None
    rejected_first = np.flatnonzero(faces["first_review"] == "rejected")
    closest, distances = nearest_actor(embeddings[rejected_first], gallery, gallery_labels,
                                       exclude=np.array([np.flatnonzero(accepted == i)[0] if i in accepted else -1
                                                         for i in rejected_first]))
    # With no stranger reviewed yet there is nothing to learn a threshold from: propose the nearest actor.
    proposal = closest if threshold is None else np.where(distances <= threshold, closest, "stranger")
    second = [("unusable" if s == "rejected" else "stranger" if s == "stranger" else str(label))
              if where == "corrections" else "not reviewed"
              for s, label, where in zip(status[rejected_first], labels[rejected_first],
                                         faces["reviewed_in"][rejected_first])]
    table = pd.DataFrame({"image": faces["images"][rejected_first],
                          **{k: faces["boxes"][rejected_first, i] for i, k in enumerate("xywh")},
                          "nearest_actor": closest, "distance": distances.round(3), "proposal": proposal,
                          "second_review": second}, columns=REJECTED_COLUMNS, index=rejected_first)
    return table, threshold


def write_rejected_review(faces: dict, table: pd.DataFrame, threshold: float | None) -> dict:
    """reports/rejected_review.csv (every box the first review rejected) and a contact sheet of the boxes still
    awaiting a second review, or else of those whose verdict disagrees with the proposal."""
    import cv2

    table.sort_values(["second_review", "image", "x", "y"]).to_csv(artifacts.REJECTED_CSV, index=False)
    waiting = table[table.second_review == "not reviewed"]
    disagree = table[(table.second_review != "not reviewed") & (table.second_review != "unusable")
                     & (table.second_review != table.proposal)]
    shown = waiting if len(waiting) else disagree
    if len(shown):
        captions = [f"{r.proposal} ({r.nearest_actor} {r.distance:.2f})"
                    + ("" if r.second_review == "not reviewed" else f" 2nd: {r.second_review}")
                    for r in shown.itertuples()]
        cv2.imwrite(str(artifacts.REJECTED_PNG), contact_sheet(faces["crops"][shown.index], captions))
    else:
        cv2.imwrite(str(artifacts.REJECTED_PNG), np.full((40, 200, 3), 255, np.uint8))
    return {"rejected_boxes": len(table), "rejected_unreviewed": len(waiting),
            "rejected_disagreements": len(disagree),
            "proposal_threshold": None if threshold is None else round(float(threshold), 4)}


def run_audit(params: AuditParams, featurize: FeaturizeParams, data: DataParams, search: SearchParams) -> dict:
    """Score every accepted face against the rest, propose verdicts for the rejected boxes with the open-set rule
    (its threshold learned for search.target_false_accept and search.objective); write both reports and a metric."""
    import cv2

    feature_set = params.feature_set
    if feature_set not in featurize.feature_sets:
        feature_set = featurize.feature_sets[0]
        log.warning("audit: audit.feature_set %r is not in featurize.feature_sets %s; auditing with %r",
                    params.feature_set, list(featurize.feature_sets), feature_set)
    X_all = artifacts.load_features(feature_set)
    faces = load_faces()
    accepted = np.flatnonzero(faces["status"] == "accepted")
    X, y = X_all[accepted], faces["labels"][accepted]
    agreement, predicted = out_of_fold_agreement(X, y, params.folds, params.repeats, params.seed)
    table = pd.DataFrame({"image": faces["images"][accepted],
                          **{k: faces["boxes"][accepted, i] for i, k in enumerate("xywh")},
                          "label": y, "predicted": predicted, "agreement": agreement.round(3),
                          "reviewed_in": faces["reviewed_in"][accepted]}, columns=COLUMNS)
    suspects = table[table.agreement < 0.5].sort_values(["agreement", "image"])
    artifacts.AUDIT_CSV.parent.mkdir(parents=True, exist_ok=True)
    suspects.to_csv(artifacts.AUDIT_CSV, index=False)
    if len(suspects):
        captions = [f"{r.label} -> {r.predicted}{' (2nd)' if r.reviewed_in == 'corrections' else ''}"
                    for r in suspects.itertuples()]
        cv2.imwrite(str(artifacts.AUDIT_PNG), contact_sheet(faces["crops"][accepted[suspects.index]], captions))
    else:
        cv2.imwrite(str(artifacts.AUDIT_PNG), np.full((40, 200, 3), 255, np.uint8))
    open_suspects = suspects[suspects.reviewed_in != "corrections"]
    proposals, threshold = propose_verdicts(faces, artifacts.load_features(EMBEDDING_SPACE), search)
    metrics = {"faces": len(y), "suspects": len(suspects), "unreviewed_suspects": len(open_suspects),
               "feature_set": feature_set, **write_rejected_review(faces, proposals, threshold)}
    artifacts.write_json(artifacts.AUDIT_REPORT, metrics)
    # The DVC metric: the faces audited and how many look mislabelled (the rest is in the report).
    artifacts.write_json(artifacts.AUDIT_METRICS, {"faces": metrics["faces"], "suspects": metrics["suspects"]})
    for row in open_suspects.itertuples():
        log.warning("audit: %s box (%d, %d, %d, %d) is labelled %s but looks like %s (%.0f%% agreement)",
                    row.image, row.x, row.y, row.w, row.h, row.label, row.predicted, 100 * row.agreement)
    if len(open_suspects):
        log.warning("audit: %d face(s) need a second look: see %s, and record each verdict in %s (the same "
                    "columns as annotations.csv plus a reason)", len(open_suspects), artifacts.AUDIT_PNG,
                    data.corrections)
    log.info("audit: %d of %d faces suspect, %d already reviewed a second time", len(suspects), len(y),
             len(suspects) - len(open_suspects))
    log.info("audit: %d of %d rejected boxes await a second review, %d verdicts differ from the proposal (%s, %s); "
             "verdicts go to %s", metrics["rejected_unreviewed"], metrics["rejected_boxes"],
             metrics["rejected_disagreements"], artifacts.REJECTED_CSV, artifacts.REJECTED_PNG, data.corrections)
    return metrics
