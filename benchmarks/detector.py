"""Detector recall against the accepted annotation boxes, and its time per image, for each detector setting.

    python benchmarks/detector.py [--project PATH] [--images N]

Without --project it copies the repository and pulls the data (needs ../shared/dvc-store or BBT_SHARED).
Decoding is done beforehand and not timed; detection runs in this one thread, one image at a time. Prints wall
and CPU milliseconds per image (p50, p90): on a shared machine the CPU figure is the steadier one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt.annotations import load_annotations
from bbt.clean import list_images, plan_jobs
from bbt.faces import DetectorSettings, FaceDetector
from bbt.images import ImageError, decode_image

SETTINGS = {
    "haar (exact annotation rule)": DetectorSettings(),
    "haar, downscaled to 640 px": DetectorSettings(max_side=640),
    "hog, resized to 800 px (shipped)": DetectorSettings(method="hog", hog_side=800),
    "hog, resized to 1024 px": DetectorSettings(method="hog", hog_side=1024),
    "hog, 640 px, upsample 1": DetectorSettings(method="hog", hog_side=640, hog_upsample=1),
}


def pulled_project() -> Path:
    from tests.conftest import copy_project

    project = copy_project(Path(tempfile.mkdtemp(prefix="bbt-bench-")))
    project.run("dvc", "pull", "-q", "data.dvc")
    return project.root


def decoded_photos(root: Path, limit: int) -> list[tuple[np.ndarray, list]]:
    """Each distinct photo, decoded, with its accepted annotation boxes."""
    raw = root / "data/raw"
    annotations = load_annotations(root / "data/annotations.csv", raw)
    photos = []
    for job in plan_jobs(raw, list_images(raw), annotations)[: limit or None]:
        try:
            image = decode_image((raw / job.paths[0]).read_bytes(), name=job.paths[0])
        except ImageError:
            continue
        photos.append((image, sorted({a.box for a in job.annotations if a.review == "accepted"},
                                     key=lambda b: (b.x, b.y))))
    return photos


def measure(settings: DetectorSettings, photos: list, iou_threshold: float = 0.5) -> dict[str, float]:
    detector = FaceDetector(settings)
    detector.detect(photos[0][0])  # load the models outside the timings
    wall, cpu, found, total, detections = [], [], 0, 0, 0
    for image, accepted in photos:
        started, started_cpu = time.perf_counter(), time.process_time()
        boxes = detector.detect(image)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        detections += len(boxes)
        total += len(accepted)
        found += sum(any(a.iou(b) >= iou_threshold for b in boxes) for a in accepted)
    ms = 1000 * np.array([wall, cpu])
    return {"recall": found / total, "found": found, "accepted": total, "detections": detections,
            "wall_p50": np.percentile(ms[0], 50), "wall_p90": np.percentile(ms[0], 90),
            "cpu_p50": np.percentile(ms[1], 50), "cpu_p90": np.percentile(ms[1], 90)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project folder with data/ pulled (default: a fresh copy)")
    parser.add_argument("--images", type=int, default=0, help="only the first N photos (0 = all)")
    args = parser.parse_args()
    photos = decoded_photos(args.project or pulled_project(), args.images)
    print(f"{len(photos)} photos; machine shared with other jobs, timings are noisy\n")
    print("| detector | recall | detections | wall ms p50 / p90 | CPU ms p50 / p90 |")
    print("|---|---|---|---|---|")
    for name, settings in SETTINGS.items():
        r = measure(settings, photos)
        print(f"| {name} | {r['recall']:.3f} ({r['found']}/{r['accepted']}) | {r['detections']} | "
              f"{r['wall_p50']:.0f} / {r['wall_p90']:.0f} | {r['cpu_p50']:.0f} / {r['cpu_p90']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
