"""Detector recall against the accepted boxes of both reviews, and its CPU per photo, for each detector setting.

    python benchmarks/detector.py [--project PATH] [--images N]

Without --project it copies the repository and pulls the data (needs ../shared/dvc-store or BBT_SHARED).
Each photo is decoded as the setting says (its decode_side) and its faces detected, in this one thread, one
photo at a time (OpenCV on one thread, as in the service). Prints CPU milliseconds per photo (p50, p90) for
detection alone and for decoding + detection: on a shared machine CPU time is steadier than wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt.config import DataParams
from bbt.pipeline.clean import list_images, plan_jobs, reviewed_annotations
from bbt.vision.faces import Box, DetectorSettings, FaceDetector
from bbt.vision.images import ImageError, decode_photo

SETTINGS = {
    "yunet, 640 px, JPEG decoded to >= 1280 px (shipped)": DetectorSettings(detector="yunet", decode_side=1280),
    "yunet, 640 px, full decode": DetectorSettings(detector="yunet"),
    "yunet, 480 px, JPEG decoded to >= 1280 px": DetectorSettings(detector="yunet", yunet_side=480, decode_side=1280),
    "yunet, 960 px, JPEG decoded to >= 1280 px": DetectorSettings(detector="yunet", yunet_side=960, decode_side=1280),
    "hog, resized to 800 px (before)": DetectorSettings(detector="hog", hog_side=800),
    "haar (exact annotation rule)": DetectorSettings(detector="haar", decode_side=0),
}


def pulled_project() -> Path:
    from tests.conftest import copy_project

    project = copy_project(Path(tempfile.mkdtemp(prefix="bbt-bench-")))
    project.run("dvc", "pull", "-q", "data.dvc")
    return project.root


def readable_photos(root: Path, limit: int) -> list[tuple[str, bytes, list[Box]]]:
    """Each distinct readable photo: its name, bytes and accepted boxes (annotations.csv + the second review)."""
    raw = root / "data/raw"
    data = DataParams(raw, root / "data/annotations.csv", root / "review/corrections.csv")
    photos = []
    for job in plan_jobs(raw, list_images(raw), reviewed_annotations(data)[0])[: limit or None]:
        payload = (raw / job.paths[0]).read_bytes()
        try:
            decode_photo(payload, job.paths[0])
        except ImageError:
            continue
        photos.append((job.paths[0], payload, sorted({a.box for a in job.annotations if a.review == "accepted"},
                                                    key=lambda b: (b.x, b.y))))
    return photos


def measure(settings: DetectorSettings, photos: list, iou_threshold: float = 0.5) -> dict[str, float]:
    detector = FaceDetector(settings)
    detector.detect_photo(decode_photo(photos[0][1]))  # load the models outside the timings
    detect_cpu, total_cpu, found, total, detections = [], [], 0, 0, 0
    for name, payload, accepted in photos:
        started = time.thread_time()
        photo = decode_photo(payload, name, min_side=settings.decode_side)
        decoded = time.thread_time()
        boxes = detector.detect_photo(photo)
        done = time.thread_time()
        detect_cpu.append(done - decoded)
        total_cpu.append(done - started)
        detections += len(boxes)
        total += len(accepted)
        found += sum(any(a.iou(b) >= iou_threshold for b in boxes) for a in accepted)
    ms = 1000 * np.array([detect_cpu, total_cpu])
    return {"recall": found / total, "found": found, "accepted": total, "detections": detections,
            "detect_p50": np.percentile(ms[0], 50), "detect_p90": np.percentile(ms[0], 90),
            "total_p50": np.percentile(ms[1], 50), "total_p90": np.percentile(ms[1], 90)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project folder with data/ pulled (default: a fresh copy)")
    parser.add_argument("--images", type=int, default=0, help="only the first N photos (0 = all)")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    photos = readable_photos(args.project or pulled_project(), args.images)
    print(f"{len(photos)} photos; CPU ms per photo of this thread\n")
    print("| detector | recall | detections | detect CPU ms p50 / p90 | decode + detect CPU ms p50 / p90 |")
    print("|---|---|---|---|---|")
    for name, settings in SETTINGS.items():
        r = measure(settings, photos)
        print(f"| {name} | {r['recall']:.3f} ({r['found']}/{r['accepted']}) | {r['detections']} | "
              f"{r['detect_p50']:.0f} / {r['detect_p90']:.0f} | {r['total_p50']:.0f} / {r['total_p90']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
