"""The label audit on the real data pulled from the DVC remote."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bbt import artifacts
from bbt.config import AuditParams, DataParams, FeaturizeParams, SearchParams
from bbt.pipeline.audit import run_audit
from tests.conftest import Project

pytestmark = pytest.mark.integration


def test_without_the_second_review_the_audit_flags_the_mislabelled_boxes(
    pulled_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the real data with review/corrections.csv emptied: the three boxes it relabels are all suspects."""
    from bbt.config import CleanParams, SplitParams
    from bbt.pipeline.clean import Cast, run_clean
    from bbt.pipeline.featurize import run_featurize

    root = pulled_project.root
    empty = tmp_path / "none.csv"
    empty.write_text("image,x,y,w,h,label,review,reason\n")
    data = DataParams(root / "data/raw", root / "data/annotations.csv", empty)
    monkeypatch.chdir(tmp_path)
    run_clean(data, CleanParams(workers=2), Cast(("howard", "leonard", "raj", "sheldon"), 7, ""))
    featurize = FeaturizeParams(feature_sets=("face_embedding",))
    run_featurize(SplitParams(), featurize)
    metrics = run_audit(AuditParams(), featurize, data, SearchParams())
    suspects = pd.read_csv(artifacts.AUDIT_CSV)
    flagged = set(zip(suspects.image, suspects.label, suspects.predicted))
    shipped = pd.read_csv(root / "review/corrections.csv")
    first = pd.read_csv(root / "data/annotations.csv")
    shipped = shipped.merge(first, on=["image", "x", "y", "w", "h"], suffixes=("", "_first"))
    # The boxes the first review accepted under the folder's actor that the second review gave to another actor.
    relabelled = shipped[(shipped.review_first == "accepted") & (shipped.label != shipped.label_first)]
    assert len(relabelled) == 3
    for row in relabelled.itertuples():
        original = row.image.split("/")[0]
        assert (row.image, original, row.label) in flagged, row.image
    assert metrics["unreviewed_suspects"] == metrics["suspects"] <= 5
