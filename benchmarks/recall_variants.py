"""Higher recall at the same false-accept rate? Each variant of the descriptor or the distance, judged by the
grouped evaluation (bbt/pipeline/photos.py: every reviewed face, CV grouped by photo, each fold's threshold learned
for search.target_false_accept by grouped CV inside it), and what it costs per face when serving.

    python benchmarks/recall_variants.py [--project PATH]

Uses a project where `dvc repro` has run (default: this one): its faces, embeddings and champion (model.json).
Variants: the descriptors as served; each face's descriptor averaged with its mirror image's; a within-class
whitening learned on each fold's actors (WCCN); LDA on each fold's actors (3 dimensions for 4 actors); and a
threshold per face size (faces under / over 96 px, each learned on its own CV faces). A variant is worth adopting
only if it names more actors at no more strangers named.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def whitening(E: np.ndarray, labels: np.ndarray) -> object:
    """Within-class whitening: the inverse square root of the actors' within-class covariance (ridge 1e-3 of
    its trace per dimension, since 150 faces cannot fill 128 dimensions)."""
    centred = np.concatenate([E[labels == a] - E[labels == a].mean(axis=0) for a in np.unique(labels)])
    covariance = centred.T @ centred / len(centred)
    covariance += np.eye(len(covariance)) * 1e-3 * np.trace(covariance) / len(covariance)
    values, vectors = np.linalg.eigh(covariance)
    transform = vectors @ np.diag(values ** -0.5) @ vectors.T
    scale = np.sqrt(np.trace(covariance) / len(covariance))  # keep distances in the embedding's own units
    return lambda X: (X @ transform) * scale


def lda(E: np.ndarray, labels: np.ndarray) -> object:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    fitted = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(E, labels)
    return lambda X: fitted.transform(X)


def per_size_threshold(table, params, widths_split: int = 96):
    """Answers with a threshold per size group, each learned on that group's out-of-fold distances of the same
    outer fold's training faces would need a second inner CV: measured here on the pooled grouped answers
    instead (an upper bound on what it could give)."""
    from bbt import CANT_TELL, UNKNOWN
    from bbt.model.openset import learn_threshold, open_set_labels

    answers = table.answer.to_numpy(object).copy()
    for small in (True, False):
        part = (table.width < widths_split) == small
        labels = table.label[part].to_numpy(object)
        if (labels == UNKNOWN).sum() == 0:
            continue
        t = learn_threshold(labels, table.closest[part].to_numpy(object), table.distance[part].to_numpy(float),
                            params.target_false_accept, params.objective)
        answers[part.to_numpy()] = open_set_labels(table.closest[part].to_numpy(object),
                                                   table.distance[part].to_numpy(float), t)
    answers[table.answer.to_numpy(object) == CANT_TELL] = CANT_TELL
    return table.assign(answer=answers)


def without_band(table, min_width: int):
    """The same folds' answers with each fold's threshold alone: no band of "can't tell"."""
    from bbt import CANT_TELL
    from bbt.model.openset import open_set_labels

    answers = open_set_labels(table.closest.to_numpy(object), table.distance.to_numpy(float),
                              table.threshold.to_numpy(float))
    answers[table.width.to_numpy() < min_width] = CANT_TELL
    return table.assign(answer=answers)


def recall_at(curve, false_accept: float) -> float:
    return float(curve[curve.false_accept_rate <= false_accept + 1e-12].actor_recall.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    os.chdir(args.project)
    from bbt.artifacts import load_faces, load_features
    from bbt.config import load_params
    from bbt.model.feature_sets import build_features
    from bbt.model.openset import EMBEDDING_SPACE
    from bbt.pipeline import photos
    from bbt.pipeline.evaluate import champion_candidate, load_model

    params = load_params()
    model, info = load_model()
    candidate = champion_candidate(info)
    faces = load_faces()
    labels, images = faces["labels"].astype(object), faces["images"].astype(object)
    widths = faces["boxes"][:, 2]
    E = load_features(EMBEDDING_SPACE)
    embedder = build_features(EMBEDDING_SPACE, params.featurize).fit(None)
    crops = faces["crops"]
    embedder.transform(crops[:4])  # load the network outside the timing
    start = time.perf_counter()
    plain = embedder.transform(crops)
    plain_ms = (time.perf_counter() - start) * 1000 / len(crops)
    start = time.perf_counter()
    mirrored = embedder.transform(np.ascontiguousarray(crops[:, :, ::-1]))
    mirror_ms = (time.perf_counter() - start) * 1000 / len(crops)
    assert np.allclose(plain, E, atol=1e-4), "the cached embeddings are not the served ones: run `dvc repro`"
    variants = {
        "as served": (E, None, 0.0),
        "mirror-averaged descriptor": ((E + mirrored) / 2, None, mirror_ms),
        "within-class whitening (WCCN)": (E, whitening, 0.0),
        "LDA (3 dims)": (E, lda, 0.0),
    }
    min_width = int(model.min_face_width)
    print(f"{'variant':34} {'recall':>7} {'as other':>8} {'unknown':>8} {'cant tell':>9} {'strangers':>9} "
          f"{'photos':>7} {'r@FA0':>6} {'r@FA.05':>7} {'+ms/face':>8}")
    rows = []
    for name, (descriptors, metric, cost) in variants.items():
        X = descriptors if candidate.head.feature_set == EMBEDDING_SPACE else load_features(candidate.head.feature_set)
        table = photos.grouped_answers(candidate, X, descriptors, labels, images, widths, min_width, params.search,
                                       metric)
        rows.append((name, table, cost))
        if name == "as served":
            rows.append(("no band (the model before issue 24)", without_band(table, min_width), 0.0))
            rows.append(("threshold per size (<96 / >=96 px)*", per_size_threshold(table, params.search), 0.0))
    for name, table, cost in rows:
        figures, photo = photos.face_figures(table), photos.photo_figures(table)
        curve = photos.recall_curve(table)
        print(f"{name:34} {figures['actor_recall']:7.3f} {figures['actor_as_other_actor']:8.3f} "
              f"{figures['actor_as_unknown']:8.3f} {figures['actor_cant_tell']:9.3f} "
              f"{figures['stranger_false_accept']:9.3f} {photo['photo_recall']:7.3f} {recall_at(curve, 0):6.3f} "
              f"{recall_at(curve, 0.05):7.3f} {cost:8.1f}")
    for name, table, _ in rows[:2]:
        print(f"\nby face width, {name}:")
        for bucket, figures in photos.by_width(table).items():
            print(f"  {bucket:9} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"\n{len(E)} faces ({int((labels != '').sum())} reviewed: {int(((labels != '') & (labels != 'unknown')).sum())}"
          f" actors'); embedding {plain_ms:.1f} ms/face, its mirror {mirror_ms:.1f} ms/face more. r@FA0 / r@FA.05:"
          " actor recall on the pooled out-of-fold curve at no / 5% strangers named. * thresholds learned on the"
          " pooled grouped answers, not inside the folds: an upper bound.")


if __name__ == "__main__":
    main()
