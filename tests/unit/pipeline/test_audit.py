"""The label audit on generated faces: a planted wrong label is flagged, a reviewed one is marked as such."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bbt import artifacts
from bbt.config import AuditParams, DataParams, FeaturizeParams, SearchParams
from bbt.errors import DataError
from bbt.pipeline.audit import out_of_fold_agreement, run_audit

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")


def clusters(per_actor: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated clusters of 16-d 'embeddings', one per actor."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(len(ACTORS), 16))
    X = np.concatenate([c + rng.normal(0, 0.5, size=(per_actor, 16)) for c in centres])
    y = np.repeat(np.array(ACTORS), per_actor)
    return X, y


def test_a_planted_wrong_label_is_the_only_suspect() -> None:
    X, y = clusters()
    y[3] = "raj"  # a Howard face labelled Raj
    agreement, predicted = out_of_fold_agreement(X, y, folds=5, repeats=3, seed=1)
    assert np.flatnonzero(agreement < 0.5).tolist() == [3]
    assert predicted[3] == "howard"


def test_fewer_faces_than_folds_uses_fewer_folds() -> None:
    X, y = clusters(per_actor=3)
    agreement, _ = out_of_fold_agreement(X, y, folds=5, repeats=1, seed=0)
    assert agreement.shape == (12,)
    with pytest.raises(DataError, match="at least 2 faces of every actor"):
        out_of_fold_agreement(X[:10], y[:10], folds=5, repeats=1, seed=0)


def write_stage_inputs(y: np.ndarray, X: np.ndarray, reviewed_in: list[str],
                       status: list[str] | None = None, first_review: list[str] | None = None) -> None:
    """faces.npz and the embeddings as clean and featurize write them (labels: actor, 'unknown' or '')."""
    artifacts.FACES.parent.mkdir(parents=True)
    artifacts.FEATURES_DIR.mkdir(parents=True)
    n = len(y)
    status = status or ["accepted"] * n
    np.savez(artifacts.FACES, crops=np.zeros((n, 32, 32, 3), np.uint8), labels=y, status=np.array(status),
             first_review=np.array(first_review or status),
             images=np.array([f"{label or 'x'}/{i}.jpg" for i, label in enumerate(y)]),
             boxes=np.tile([1, 2, 30, 30], (n, 1)), reviewed_in=np.array(reviewed_in))
    np.savez(artifacts.features_file("face_embedding"), X=X, y=y)


def test_the_stage_writes_suspects_a_sheet_and_a_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    X, y = clusters()
    y[3], y[20] = "raj", "sheldon"
    reviewed_in = ["annotations"] * len(y)
    reviewed_in[20] = "corrections"  # already looked at by a person: still listed, not counted as open
    write_stage_inputs(y, X, reviewed_in)
    metrics = run_audit(AuditParams(), FeaturizeParams(), DataParams(), SearchParams())
    assert {k: metrics[k] for k in ("faces", "suspects", "unreviewed_suspects", "feature_set")} == \
        {"faces": 48, "suspects": 2, "unreviewed_suspects": 1, "feature_set": "face_embedding"}
    assert json.loads(artifacts.AUDIT_REPORT.read_text()) == metrics
    assert json.loads(artifacts.AUDIT_METRICS.read_text()) == {"faces": 48, "suspects": 2}
    suspects = pd.read_csv(artifacts.AUDIT_CSV)
    assert sorted(suspects.image) == ["raj/3.jpg", "sheldon/20.jpg"]
    assert set(suspects.columns) >= {"x", "y", "w", "h", "label", "predicted", "agreement", "reviewed_in"}
    import cv2

    sheet = cv2.imread(str(artifacts.AUDIT_PNG))
    assert sheet is not None and sheet.shape[1] == 2 * 160


def test_an_uncomputed_feature_set_falls_back_to_a_computed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    X, y = clusters()
    write_stage_inputs(y, X, ["annotations"] * len(y))
    np.savez(artifacts.features_file("pixel_wavelet"), X=X, y=y)
    metrics = run_audit(AuditParams(), FeaturizeParams(feature_sets=("pixel_wavelet",)), DataParams(), SearchParams())
    assert metrics["feature_set"] == "pixel_wavelet" and metrics["suspects"] == 0


def test_rejected_boxes_get_a_proposed_verdict_from_the_open_set_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejected boxes near an actor's faces are proposed as that actor, far ones as strangers; a verdict given
    already is reported beside the proposal, and the boxes still waiting are counted."""
    monkeypatch.chdir(tmp_path)
    X, y = clusters()
    rng = np.random.default_rng(5)
    strangers = rng.normal(0, 4, size=(8, 16)) + 30  # far from every actor
    waiting = np.stack([X[0] + 0.1, rng.normal(0, 4, size=16) - 30])  # a Howard face, and someone else
    X_all = np.concatenate([X, strangers, waiting])
    labels = np.concatenate([y, ["unknown"] * 8, ["", ""]])
    status = ["accepted"] * len(y) + ["stranger"] * 8 + ["rejected"] * 2
    first = ["accepted"] * len(y) + ["rejected"] * 10
    reviewed_in = ["annotations"] * len(y) + ["corrections"] * 8 + ["annotations"] * 2
    write_stage_inputs(labels, X_all, reviewed_in, status, first)
    metrics = run_audit(AuditParams(), FeaturizeParams(), DataParams(), SearchParams())
    assert (metrics["rejected_boxes"], metrics["rejected_unreviewed"], metrics["rejected_disagreements"]) == (10, 2, 0)
    table = pd.read_csv(artifacts.REJECTED_CSV)
    open_rows = table[table.second_review == "not reviewed"].sort_values("distance")
    assert list(open_rows.proposal) == ["howard", "stranger"]
    assert set(table[table.second_review == "stranger"].proposal) == {"stranger"}
