"""The sharpness measure (bbt/model/quality.py): what it costs a served face, and at which side it tells the blurs
the descriptor shrugs off (sigma 0-2 px of the 128 px crop) from those it fails on (4-6 px).

    python benchmarks/sharpness.py [--repeats 5]

On the dataset's own face crops (artifacts/faces/faces.npz, 128 px, as serving crops them): the time per face of
`sharpness` (median of --repeats), then for each side the measure could be taken at, the ROC AUC between the crops
blurred by 0, 1, 2 px and by 4, 5, 6 px (1.0: a threshold separates them perfectly). Last, the test split's actor
faces' photos blurred whole (sigma a 60th to a 10th of the face's width, as a camera out of focus would) and
answered by the trained model (artifacts/model), with the sharpness rule and without it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from bbt import CANT_TELL, UNKNOWN
from bbt.artifacts import load_faces, load_split
from bbt.model import quality

MILD, HEAVY = (0.0, 1.0, 2.0), (4.0, 5.0, 6.0)


def separation(crops: np.ndarray, side: int) -> float:
    """ROC AUC of the measure at `side` px between mildly and heavily blurred crops."""
    with mock.patch.object(quality, "SHARPNESS_SIDE", side):
        mild = np.concatenate([quality.sharpness(quality.blur(crops, s)) for s in MILD])
        heavy = np.concatenate([quality.sharpness(quality.blur(crops, s)) for s in HEAVY])
    return float(roc_auc_score(np.r_[np.ones(len(mild)), np.zeros(len(heavy))], np.r_[mild, heavy]))


def blurred_test_faces(shares: tuple[int, ...]) -> None:
    """Each test actor face's photo blurred by sigma = width / share, answered with and without the rule."""
    from bbt.model.predict import ActorClassifier
    from bbt.pipeline.evaluate import load_model
    from bbt.vision.faces import Box

    classifier = ActorClassifier.from_info(*load_model())
    model = classifier.model
    edges = (model.min_sharpness, model.min_sharpness_named)
    faces, (_, test) = load_faces(), load_split()
    chosen = [i for i in test if faces["status"][i] == "accepted"]
    print(f"\n{len(chosen)} test actor faces, their photos blurred whole, answered with the rule (min_sharpness "
          f"{edges[0]:.3f}, names from {edges[1]:.3f}) / without it: named right, 'not one of the four', can't tell, "
          "not found")
    for share in shares:
        counts = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}
        for i in chosen:
            box, actor = Box(*map(int, faces["boxes"][i])), str(faces["labels"][i])
            pixels = cv2.imread(str(Path("data/raw") / str(faces["images"][i])))
            pixels = cv2.GaussianBlur(pixels, (0, 0), box.w / share)  # the whole photo: a camera out of focus
            data = cv2.imencode(".png", pixels)[1].tobytes()
            for rule in (True, False):
                model.min_sharpness, model.min_sharpness_named = edges if rule else (0.0, 0.0)
                found = [f for f in classifier.classify_bytes(data, "blurred.png", 40_000_000)[0]
                         if box.iou(f.box) >= 0.5]
                label = found[0].label if found else ""  # not found: no answer either way
                counts[rule][0] += label == actor
                counts[rule][1] += label == UNKNOWN
                counts[rule][2] += label == CANT_TELL
                counts[rule][3] += not found
        model.min_sharpness, model.min_sharpness_named = edges
        print(f"  sigma = width / {share:2}: " + " / ".join(
            ", ".join(f"{c / len(chosen):.2f}" for c in counts[rule]) for rule in (True, False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    crops = load_faces()["crops"]
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        measured = quality.sharpness(crops)
        times.append((time.perf_counter() - start) / len(crops) * 1000)
    print(f"{len(crops)} face crops of {crops.shape[1]} px: sharpness at {quality.SHARPNESS_SIDE} px "
          f"{statistics.median(times):.3f} ms a face (median of {args.repeats}); measured from {measured.min():.3f} "
          f"to {measured.max():.3f}, median {np.median(measured):.3f}")
    for side in (128, 64, 48, 32):
        print(f"measured at {side:3} px: blurs of 0-2 px told from 4-6 px with ROC AUC {separation(crops, side):.3f}")
    blurred_test_faces((60, 45, 35, 25, 20, 10))


if __name__ == "__main__":
    main()
