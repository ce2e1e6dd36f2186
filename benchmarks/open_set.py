"""Per feature set, model family and open-set rule: the held-out actor macro-F1 and stranger false-accept rate,
and what the "unknown" rule costs per face.

    python benchmarks/open_set.py [--project PATH] [--images N]

Uses a project where `dvc repro` has run (default: this one): its faces, feature matrices and split. For each
(feature set, family, rule) it does what the search does, restricted to that family: the best grid point by the
CV objective, its threshold learned by CV, refitted on the training split, then scored on the held-out test
split. Then it times the served path of the champion's kind of model on N photos (decode excluded), with and
without the open-set rule.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt import UNKNOWN
from bbt.artifacts import load_faces, load_features, load_split
from bbt.config import load_params
from bbt.model.candidates import Candidate, heads
from bbt.model.openset import EMBEDDING_SPACE
from bbt.model.photo_folds import photo_folds
from bbt.pipeline.evaluate import score
from bbt.pipeline.search import out_of_fold, ranking_key, refit, score_rule
from bbt.vision.faces import Box, crop_face


def best_per_family(params, faces: dict, train: np.ndarray) -> list[tuple[Candidate, dict, object]]:
    """(candidate, CV scores, refitted model) of the best grid point of every feature set x family x rule."""
    y = faces["labels"][train].astype(object)
    folds = photo_folds(y, faces["images"][train], params.search.cv_folds, params.search.seed)
    E = load_features(EMBEDDING_SPACE)[train]
    rules = params.search.open_set_rules
    scored: dict[tuple[str, str, str], list[tuple[Candidate, dict]]] = {}
    for head in heads(params.search, params.featurize.feature_sets):
        X = load_features(head.feature_set)[train]
        oof = out_of_fold(head, X, E, y, folds, params.search.seed, rules)
        for rule in rules:
            row = score_rule(y, oof["answers"][rule], oof["distances"][rule], params.search.target_false_accept,
                             params.search.objective)
            scored.setdefault((head.feature_set, head.family, rule), []).append((Candidate(head, rule), row))
    found = []
    for group in scored.values():
        candidate, row = min(group, key=lambda cr: ranking_key(cr[1], params.search.objective, cr[0]))
        X = load_features(candidate.head.feature_set)[train]
        # Judged at every width and without a band: this compares the rules' thresholds alone.
        found.append((candidate, row, refit(candidate, X, E, y, row["threshold"], 0,
                                            (row["threshold"], row["threshold"]), params)))
    return found


def photos_with_faces(root: Path, faces: dict, count: int) -> list[tuple[np.ndarray, list[Box]]]:
    """Decoded photos with their reviewed boxes (so detection does not blur the rule's cost)."""
    from bbt.vision.images import decode_image

    by_image: dict[str, list[Box]] = {}
    for image, box in zip(faces["images"], faces["boxes"]):
        by_image.setdefault(str(image), []).append(Box(*(int(v) for v in box)))
    chosen = sorted(by_image)[:count]
    return [(decode_image((root / "data/raw" / name).read_bytes(), name), by_image[name]) for name in chosen]


def cost_per_face(model, photos: list, crop_size: int, repeats: int = 20) -> tuple[float, float]:
    """CPU ms per face of the whole open-set answer (embedding, classifier, rule) and of the rule alone."""
    from bbt.model.openset import RULES

    batches = [np.stack([crop_face(image, box, crop_size) for box in boxes]) for image, boxes in photos]
    n = sum(len(b) for b in batches)
    model.decide(batches[0])  # load the networks outside the timings
    started = time.process_time()
    for batch in batches:
        model.decide(batch)
    whole = 1000 * (time.process_time() - started) / n
    embedded = [model.embedder.transform(batch) for batch in batches]
    classes = np.asarray(model.classes_)
    gallery_index = np.searchsorted(classes, model.gallery_labels)
    started = time.process_time()
    for _ in range(repeats):
        for E in embedded:
            predicted = np.zeros(len(E), dtype=int)
            RULES[model.rule].distance(E, None, predicted, model.gallery, gallery_index)
    rule = 1000 * (time.process_time() - started) / (n * repeats)
    return whole, rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project where `dvc repro` has run")
    parser.add_argument("--images", type=int, default=100, help="photos to time the rule's cost on")
    args = parser.parse_args()
    import os

    os.chdir(args.project)
    params = load_params()
    faces = load_faces()
    train, test = load_split()
    crops, labels = faces["crops"][test], faces["labels"][test].astype(object)
    print(f"test split: {int((labels != UNKNOWN).sum())} actor faces, {int((labels == UNKNOWN).sum())} strangers' "
          f"faces; objective {params.search.objective}, target false-accept rate "
          f"{params.search.target_false_accept}\n")
    print("| feature set | family | rule | best grid point | CV objective | CV false accepts | threshold | "
          "test actor macro-F1 | test false-accept rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for candidate, row, model in best_per_family(params, faces, train):
        tested = score(model, crops, labels)
        settings = candidate.head.name.split("(", 1)[1].rstrip(")")
        print(f"| {candidate.head.feature_set} | {candidate.head.family} | {candidate.rule} | {settings} | "
              f"{row[f'cv_{params.search.objective}']:.3f} | {row['cv_false_accept_rate']:.3f} | "
              f"{row['threshold']:.3f} | {tested['actor_f1']:.3f} | {tested['false_accept_rate']:.3f} |",
              flush=True)
    champion_kind = replace(params, search=replace(params.search, families=("logistic_regression",),
                                                     open_set_rules=("nearest_face",)))
    champion = next(m for c, _, m in best_per_family(champion_kind, faces, train)
                    if c.head.feature_set == EMBEDDING_SPACE)
    photos = photos_with_faces(Path("."), faces, args.images)
    whole, rule = cost_per_face(champion, photos, int(crops.shape[1]))
    print(f"\nCPU per face over {sum(len(b) for _, b in photos)} faces of {len(photos)} photos (boxes as reviewed, "
          f"no detection): embedding + logistic regression + nearest-face rule {whole:.2f} ms, of which the rule "
          f"({len(champion.gallery)} gallery faces) {rule:.3f} ms")


if __name__ == "__main__":
    main()
