"""The review queue's detections nobody reviewed, in groups (bbt/review/clusters.py) a reviewer judges at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbt import artifacts
from bbt.config import Params
from bbt.errors import DataError
from bbt.model.openset import RULES
from bbt.review.clusters import ClusterSettings, Group, Proposal, group_faces
from bbt.review.descriptors import describe_faces, load_anchors
from bbt.review.queue import Item

# The queue's sources that are clustered: the detections nobody reviewed (narrow ones included). Feedback,
# suspects and rejected boxes each carry their own reason and proposal, and stay one at a time.
CLUSTERED = ("cant_tell", "unreviewed")
NEAREST_FACE = next(iter(RULES))  # the open-set rule whose threshold is a distance in the descriptors' space


@dataclass(frozen=True)
class QueueGroup:
    """A group of queued faces: `id` is its place in the order ("g1", "g2", ...)."""

    id: str
    kind: str
    keys: tuple[str, ...]
    proposal: Proposal
    agreement: float
    outliers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "keys": list(self.keys), "size": len(self.keys),
                "verdict": self.proposal.verdict, "says": self.proposal.says,
                "distance": round(self.proposal.distance, 4), "threshold": round(self.proposal.threshold, 4),
                "agreement": round(self.agreement, 4), "outliers": list(self.outliers)}


def people(params: Params) -> tuple[str, ...]:
    """The people a group can be proposed as: params.yaml's cast."""
    return params.cast


def search_threshold(root: Path) -> float:
    """The open-set distance threshold of the model the search chose (artifacts/model/model.json), which register
    makes the champion."""
    path = root / artifacts.MODEL_INFO
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro search` (the clusters' proposals use its open-set "
                        "threshold)")
    open_set = json.loads(path.read_text())["open_set"]
    if open_set["rule"] != NEAREST_FACE:
        raise DataError(f"{path}: the model's open-set rule is {open_set['rule']!r}, whose threshold is not a "
                        f"descriptor distance; the clusters need a {NEAREST_FACE!r} model (search.open_set_rules)")
    return float(open_set["threshold"])


def settings_of(params: Params) -> ClusterSettings:
    review = params.review
    return ClusterSettings(review.min_cluster_size, review.min_samples, review.group_size,
                           review.outlier_distance, frozenset(review.collages))


def group_queue(root: Path, params: Params, queue: list[Item], threshold: float) -> list[QueueGroup]:
    """The queue's CLUSTERED faces in groups, in the order a reviewer meets them."""
    items = [item for item in queue if item.source in CLUSTERED]
    anchors = load_anchors(root)
    waiting = describe_faces(root, params, [(item.image, item.box) for item in items])
    groups: list[Group] = group_faces(waiting, [item.image for item in items], anchors.X, anchors.labels,
                                      list(anchors.images), people(params), threshold, settings_of(params))
    return [QueueGroup(f"g{n}", g.kind, tuple(items[m].key for m in g.members), g.proposal, g.agreement,
                       tuple(items[m].key for m in g.outliers)) for n, g in enumerate(groups, start=1)]
