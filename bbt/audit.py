"""Stage `audit`: find accepted faces whose label the rest of the data disagrees with, for a second review.

Every face is predicted by models that never saw it (repeated stratified K-fold). A face that most of those
predictions give to another actor is a suspect: a mislabelled box, or a rare kind of picture (a drawing).
A person looks at the contact sheet and records the verdict in review/corrections.csv, which `clean` applies.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bbt import artifacts
from bbt.config import AuditParams, DataParams, FeaturizeParams
from bbt.errors import DataError
from bbt.featurize import load_faces

log = logging.getLogger(__name__)

COLUMNS = ["image", "x", "y", "w", "h", "label", "predicted", "agreement", "reviewed_in"]


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


def run_audit(params: AuditParams, featurize: FeaturizeParams, data: DataParams) -> dict:
    """Score every accepted face against the rest; write the suspects (csv, contact sheet) and a metric."""
    import cv2

    feature_set = params.feature_set
    if feature_set not in featurize.feature_sets:
        feature_set = featurize.feature_sets[0]
        log.warning("audit: audit.feature_set %r is not in featurize.feature_sets %s; auditing with %r",
                    params.feature_set, list(featurize.feature_sets), feature_set)
    path = artifacts.features_file(feature_set)
    if not path.exists():
        raise DataError(f"{path} not found: run `dvc repro featurize` (or `bbt featurize`) first")
    faces = load_faces()
    with np.load(path) as features:
        X, y = features["X"], features["y"]
    agreement, predicted = out_of_fold_agreement(X, y, params.folds, params.repeats, params.seed)
    reviewed_in = faces.get("reviewed_in", np.full(len(y), "annotations"))
    table = pd.DataFrame({"image": faces["images"], **{k: faces["boxes"][:, i] for i, k in enumerate("xywh")},
                          "label": y, "predicted": predicted, "agreement": agreement.round(3),
                          "reviewed_in": reviewed_in}, columns=COLUMNS)
    suspects = table[table.agreement < 0.5].sort_values(["agreement", "image"])
    artifacts.AUDIT_CSV.parent.mkdir(parents=True, exist_ok=True)
    suspects.to_csv(artifacts.AUDIT_CSV, index=False)
    if len(suspects):
        captions = [f"{r.label} -> {r.predicted}{' (2nd)' if r.reviewed_in == 'corrections' else ''}"
                    for r in suspects.itertuples()]
        cv2.imwrite(str(artifacts.AUDIT_PNG), contact_sheet(faces["crops"][suspects.index], captions))
    else:
        cv2.imwrite(str(artifacts.AUDIT_PNG), np.full((40, 200, 3), 255, np.uint8))
    open_suspects = suspects[suspects.reviewed_in != "corrections"]
    metrics = {"faces": len(y), "suspects": len(suspects), "unreviewed_suspects": len(open_suspects),
               "feature_set": feature_set}
    artifacts.AUDIT_METRICS.parent.mkdir(parents=True, exist_ok=True)
    artifacts.AUDIT_METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    for row in open_suspects.itertuples():
        log.warning("audit: %s box (%d, %d, %d, %d) is labelled %s but looks like %s (%.0f%% agreement)",
                    row.image, row.x, row.y, row.w, row.h, row.label, row.predicted, 100 * row.agreement)
    if len(open_suspects):
        log.warning("audit: %d face(s) need a second look: see %s, and record each verdict in %s (the same "
                    "columns as annotations.csv plus a reason)", len(open_suspects), artifacts.AUDIT_PNG,
                    data.corrections)
    log.info("audit: %d of %d faces suspect, %d already reviewed a second time", len(suspects), len(y),
             len(suspects) - len(open_suspects))
    return metrics
