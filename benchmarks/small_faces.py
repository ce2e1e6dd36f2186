"""Small faces in big photos: is every accepted face still found, and named, when it is 96, 64 or 48 px wide?

    python benchmarks/small_faces.py [--project PATH] [--widths 96 64 48] [--limit N]

For every accepted face of the dataset (artifacts/faces, both reviews), its photo is scaled so that the face is
`width` px wide and placed (cropped around the face where it is larger) at a seeded random spot of a grey
1920x1280 canvas, which is JPEG-encoded and goes through the served path: decode, detect, crop, embed, decide.
Found = a detected box with IoU >= 0.5 with the face's scaled box; named = that face answered with its actor.
The served model is the project's registered champion (`bbt register` first); the other detector settings
are measured for "found" only. Faces of the held-out test split are counted apart: the champion's gallery
holds the training faces, so "named" on them is the optimistic figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt import UNKNOWN
from bbt.vision.faces import Box, DetectorSettings, FaceDetector
from bbt.vision.images import decode_photo

CANVAS = (1920, 1280)
GREY = 114
IOU = 0.5
OTHER_DETECTORS = {
    "yunet, 480 px": DetectorSettings(detector="yunet", yunet_side=480, decode_side=1280),
    "yunet, 960 px": DetectorSettings(detector="yunet", yunet_side=960, decode_side=1280),
    "hog, 800 px (before)": DetectorSettings(detector="hog", hog_side=800, decode_side=0),
}


@dataclass(frozen=True)
class Case:
    jpeg: bytes
    box: Box  # the face in the canvas
    actor: str
    test: bool


def place(image: np.ndarray, box: Box, width: int, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """The photo scaled so the face is `width` px wide, on the canvas at a random spot that keeps the face in."""
    scale = width / box.w
    scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    fx, fy, side = round(box.x * scale), round(box.y * scale), round(box.w * scale)
    # Cut the scaled photo to at most the canvas, around the face.
    h, w = scaled.shape[:2]
    left = int(np.clip(fx + side // 2 - CANVAS[0] // 2, 0, max(0, w - CANVAS[0])))
    top = int(np.clip(fy + side // 2 - CANVAS[1] // 2, 0, max(0, h - CANVAS[1])))
    piece = scaled[top:top + CANVAS[1], left:left + CANVAS[0]]
    ph, pw = piece.shape[:2]
    ox = int(rng.integers(0, CANVAS[0] - pw + 1))
    oy = int(rng.integers(0, CANVAS[1] - ph + 1))
    canvas = np.full((CANVAS[1], CANVAS[0], 3), GREY, np.uint8)
    canvas[oy:oy + ph, ox:ox + pw] = piece
    return canvas, Box(fx - left + ox, fy - top + oy, side, side)


def cases(root: Path, width: int, limit: int) -> list[Case]:
    with np.load(root / "artifacts/faces/faces.npz") as faces, np.load(root / "artifacts/features/split.npz") as split:
        labels, images, boxes = faces["labels"], faces["images"], faces["boxes"]
        test = set(split["test"].tolist())
    chosen = [i for i in range(len(labels)) if labels[i] not in (UNKNOWN, "")][: limit or None]
    rng = np.random.default_rng(width)
    built = []
    for i in chosen:
        photo = decode_photo((root / "data/raw" / str(images[i])).read_bytes(), str(images[i]))
        canvas, box = place(photo.image, Box(*map(int, boxes[i])), width, rng)
        ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        built.append(Case(jpeg.tobytes(), box, str(labels[i]), i in test))
    return built


def served_classifier(root: Path):  # -> bbt.model.predict.ActorClassifier
    os.chdir(root)
    from bbt.config import load_params
    from bbt.model.predict import ActorClassifier
    from bbt.registry.tracking import setup_tracking

    params = load_params(root / "params.yaml")
    setup_tracking()
    classifier = ActorClassifier.from_mlflow(f"models:/{params.register.model_name}@{params.register.alias}")
    classifier.warm_up()
    return classifier


def measure_served(classifier, built: list[Case]) -> dict[str, float]:
    found = named = found_test = named_test = 0
    cpu = []
    for case in built:
        start = time.process_time()
        photo = decode_photo(case.jpeg, "canvas", min_side=classifier.decode_side)
        faces = classifier.classify(photo)
        cpu.append(time.process_time() - start)
        match = max(faces, key=lambda f: f.box.iou(case.box), default=None)
        hit = match is not None and match.box.iou(case.box) >= IOU
        right = hit and match.label == case.actor
        found += hit
        named += right
        found_test += hit and case.test
        named_test += right and case.test
    n, n_test = len(built), sum(c.test for c in built)
    return {"found": found / n, "named": named / n, "found_test": found_test / max(n_test, 1),
            "named_test": named_test / max(n_test, 1), "n": n, "n_test": n_test,
            "cpu_ms_p50": 1000 * float(np.median(cpu)), "cpu_ms_p90": 1000 * float(np.quantile(cpu, 0.9))}


def measure_found(settings: DetectorSettings, built: list[Case]) -> dict[str, float]:
    detector = FaceDetector(settings)
    hits, cpu = 0, []
    for case in built:
        start = time.process_time()
        boxes = detector.detect_photo(decode_photo(case.jpeg, "canvas", min_side=settings.decode_side))
        cpu.append(time.process_time() - start)
        hits += any(b.iou(case.box) >= IOU for b in boxes)
    return {"found": hits / len(built), "cpu_ms_p50": 1000 * float(np.median(cpu))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a trained project (dvc repro, bbt register)")
    parser.add_argument("--widths", type=int, nargs="+", default=[96, 64, 48])
    parser.add_argument("--limit", type=int, default=0, help="at most this many faces (0: all)")
    parser.add_argument("--others", action="store_true", help="also measure the other detector settings")
    args = parser.parse_args()
    root = args.project.resolve()
    classifier = served_classifier(root)
    settings = classifier.detector.settings
    print(f"served detector: {settings.detector}, side {settings.yunet_side}, decode_side {settings.decode_side}; "
          f"{CANVAS[0]}x{CANVAS[1]} JPEG canvases; CPU ms per photo (decode + detect + embed + decide)")
    print("| face width | faces | found | named right | found (test split) | named right (test split) "
          "| CPU ms p50 | p90 |")
    print("|---|---|---|---|---|---|---|---|")
    others = []
    for width in args.widths:
        built = cases(root, width, args.limit)
        served = measure_served(classifier, built)
        print(f"| {width} px | {served['n']} | {served['found']:.3f} | {served['named']:.3f} | "
              f"{served['found_test']:.3f} | {served['named_test']:.3f} (of {served['n_test']}) | "
              f"{served['cpu_ms_p50']:.0f} | {served['cpu_ms_p90']:.0f} |", flush=True)
        if args.others:
            others += [(width, name, measure_found(s, built)) for name, s in OTHER_DETECTORS.items()]
    if others:
        print("\n| face width | detector | found | CPU ms p50 (decode + detect) |\n|---|---|---|---|")
        for width, name, result in others:
            print(f"| {width} px | {name} | {result['found']:.3f} | {result['cpu_ms_p50']:.0f} |")


if __name__ == "__main__":
    main()
