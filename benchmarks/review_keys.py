"""Key presses per waiting face when `bbt review` is cleared by groups (issue 25 part 1; goal: under 0.2).

    python benchmarks/review_keys.py [--project PATH] [--sweep]

Nobody knows who the waiting faces are, so two figures, each under its own stated assumptions:

A. Reviewed faces treated as waiting (labels known, so every wrong member is counted exactly): the reviewed
   actors' and strangers' faces in 2 stratified folds; each half waits while the other is the anchors. A
   group costs 1 press (its verdict: Enter for the proposal, or the key of the members' most common true verdict)
   plus 2 per member whose true verdict differs (1 click to deselect it, 1 key to judge it alone). Also printed:
   purity (share of faces whose true verdict is their group's most common one), the share of faces HDBSCAN put in
   a cluster (the rest are leftovers, grouped by their own proposal) and the proposals' accuracy. Reviewed faces
   are easier than the waiting ones (bigger, more frontal), so this is a lower bound of the real cost.
B. The real queue's detections nobody reviewed: a group costs 1 press plus 2 per member marked odd (farther than
   review.outlier_distance from the group's centre). It assumes the proposal is right for every member not
   marked odd, which nobody checked: it is the cost of the workflow, not a claim about the labels.

--sweep prints figure A for a grid of HDBSCAN settings, and how many wrong members each review.outlier_distance
marks odd: how review.min_cluster_size, min_samples and outlier_distance in params.yaml were chosen. The open-set threshold is the search's model's (artifacts/model/model.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt import UNKNOWN
from bbt.config import load_params
from bbt.pipeline.annotations import load_annotations, load_corrections
from bbt.review.clusters import STRANGER, ClusterSettings, group_faces
from bbt.review.descriptors import load_anchors
from bbt.review.groups import CLUSTERED, group_queue, people, search_threshold, settings_of
from bbt.review.queue import build_queue

FOLDS = 2
SEED = 42


def reviewed_as_waiting(root: Path, settings: ClusterSettings, threshold: float) -> dict[str, float]:
    """Figure A over the reviewed faces, fold by fold."""
    anchors = load_anchors(root)
    truth = np.where(anchors.labels == UNKNOWN, STRANGER, anchors.labels)
    presses = faces = majority = clustered = right = groups = wrong_marked = right_marked = wrong = 0
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    for rest, fold in folds.split(anchors.X, anchors.labels):
        found = group_faces(anchors.X[fold], [anchors.images[i] for i in fold], anchors.X[rest],
                            anchors.labels[rest], [anchors.images[i] for i in rest], people(), threshold, settings)
        for group in found:
            verdicts = Counter(truth[fold[m]] for m in group.members)
            most = verdicts.most_common(1)[0][1]
            presses += 1 + 2 * (len(group.members) - most)
            faces += len(group.members)
            majority += most
            clustered += len(group.members) if group.kind == "cluster" else 0
            right += verdicts[group.proposal.verdict]
            groups += 1
            for m in group.members:
                differs = truth[fold[m]] != group.proposal.verdict
                wrong += differs
                wrong_marked += differs and m in group.outliers
                right_marked += not differs and m in group.outliers
    return {"faces": faces, "groups": groups, "presses": presses, "per_face": presses / faces,
            "purity": majority / faces, "in_clusters": clustered / faces, "proposal_right": right / faces,
            "wrong": wrong, "wrong_marked": wrong_marked, "right_marked": right_marked}


def real_queue(root: Path) -> dict[str, float]:
    """Figure B over the real queue's CLUSTERED faces."""
    params = load_params(root / "params.yaml")
    annotations = load_annotations(root / params.data.annotations, root / params.data.raw)
    corrections = load_corrections(root / params.data.corrections, annotations, root / params.data.raw)
    queue = build_queue(root, corrections, None)
    started = time.perf_counter()
    groups = group_queue(root, params, queue, search_threshold(root))
    print(f"grouping the queue took {time.perf_counter() - started:.1f} s (descriptors from "
          f"artifacts/cache/review/ where kept there; delete it to time describing them)")
    faces = sum(len(g.keys) for g in groups)
    odd = sum(len(g.outliers) for g in groups)
    presses = len(groups) + 2 * odd
    says = Counter()
    for g in groups:
        says[g.proposal.says] += len(g.keys)
    print(f"B. the real queue: {faces} of its {len(queue)} faces are detections nobody reviewed ({', '.join(CLUSTERED)})"
          f"; {len(groups)} groups ({sum(g.kind == 'cluster' for g in groups)} clusters holding "
          f"{sum(len(g.keys) for g in groups if g.kind == 'cluster')} faces, the rest leftovers), sizes "
          f"{[len(g.keys) for g in groups]}; {odd} members marked odd; proposals per face {dict(says)}")
    print(f"   presses {presses} = {presses / faces:.3f} per waiting face (1 per group + 2 per marked member)")
    return {"faces": faces, "groups": len(groups), "presses": presses, "per_face": presses / faces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--sweep", action="store_true", help="figure A over a grid of HDBSCAN settings")
    args = parser.parse_args()
    root = args.project.resolve()
    os.chdir(root)
    params = load_params(root / "params.yaml")
    settings, threshold = settings_of(params), search_threshold(root)
    print(f"open-set threshold (artifacts/model/model.json): {threshold:.4f}; params.yaml review: {params.review}")
    if args.sweep:
        print("A over a grid: min_cluster_size min_samples | presses/face purity in_clusters proposal_right groups")
        for size in (3, 5, 8, 12, 20):
            for samples in (1, 2, 3, 5):
                a = reviewed_as_waiting(root, replace(settings, min_cluster_size=size, min_samples=samples), threshold)
                print(f"  {size:3d} {samples:3d} | {a['per_face']:.3f} {a['purity']:.3f} {a['in_clusters']:.3f} "
                      f"{a['proposal_right']:.3f} {a['groups']}")
        print("A over review.outlier_distance: members the proposal gets wrong, and those marked odd")
        for distance in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65):
            a = reviewed_as_waiting(root, replace(settings, outlier_distance=distance), threshold)
            print(f"  {distance:.2f} | wrong {a['wrong']}, of them marked {a['wrong_marked']}; right but marked "
                  f"{a['right_marked']}")
    a = reviewed_as_waiting(root, settings, threshold)
    print(f"A. reviewed faces as waiting ({a['faces']} faces, {FOLDS} folds): {a['groups']} groups, {a['presses']} "
          f"presses = {a['per_face']:.3f} per face; purity {a['purity']:.3f}, in clusters {a['in_clusters']:.3f}, "
          f"proposal right for {a['proposal_right']:.3f} of the faces")
    real_queue(root)


if __name__ == "__main__":
    main()
