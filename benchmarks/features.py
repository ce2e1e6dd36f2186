"""Per detector and feature set: the grid search's best CV macro-F1, its test macro-F1, and per-photo latency.

    python benchmarks/features.py [--project PATH] [--images N]

Runs the pipeline's own functions (clean's detection and matching, the split, the candidates, CV) for each
detector, then times the served path (`ActorClassifier.classify`: detect, crop, features, classify) on N decoded
photos in one thread. Without --project it copies the repository and pulls the data. Timings are noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt.candidates import candidates
from bbt.clean import detector_settings, list_images, map_images, plan_jobs, reviewed_annotations
from bbt.config import CleanParams, DataParams, Params, load_params
from bbt.featurize import build_features, split_faces
from bbt.predict import ActorClassifier
from bbt.search import evaluate_candidate
from benchmarks.detector import decoded_photos, pulled_project


def labelled_crops(root: Path, clean: CleanParams) -> tuple[np.ndarray, np.ndarray]:
    """The accepted faces' crops and labels, as the clean stage makes them (second review applied)."""
    raw = root / "data/raw"
    data = DataParams(raw, root / "data/annotations.csv", root / "review/corrections.csv")
    jobs = plan_jobs(raw, list_images(raw), reviewed_annotations(data)[0])
    faces = [f for r in map_images(jobs, raw, clean) for f in r.faces if f.status == "accepted"]
    return np.stack([f.crop for f in faces]), np.array([f.label for f in faces])


def best_model(feature_set: str, crops: np.ndarray, labels: np.ndarray,
               params: Params) -> tuple[str, float, float, Pipeline]:
    """The search's champion for one feature set: its name, CV and test macro-F1, and the refitted pipeline."""
    train, test = split_faces(labels, params.split)
    features = build_features(feature_set, params.featurize).fit(None)
    X = features.transform(crops)
    folds = StratifiedKFold(params.search.cv_folds, shuffle=True, random_state=params.search.seed)
    scored = [(c, evaluate_candidate(c, X[train], labels[train], folds, params.search.seed))
              for c in candidates(params.search, (feature_set,))]
    best, scores = min(scored, key=lambda cs: (-cs[1]["cv_f1_macro_mean"], cs[1]["fit_time_s"]))
    head = best.head(params.search.seed).fit(X[train], labels[train])
    test_f1 = f1_score(labels[test], head.predict(X[test]), average="macro")
    return best.name, scores["cv_f1_macro_mean"], test_f1, Pipeline([("features", features), *head.steps])


def latency(classifier: ActorClassifier, photos: list) -> dict[str, float]:
    classifier.classify(photos[0][0])  # load the models outside the timings
    wall, cpu, faces = [], [], 0
    for image, _ in photos:
        started, started_cpu = time.perf_counter(), time.process_time()
        faces += len(classifier.classify(image))
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    ms = 1000 * np.array([wall, cpu])
    return {"wall_p50": np.percentile(ms[0], 50), "wall_p90": np.percentile(ms[0], 90),
            "cpu_p50": np.percentile(ms[1], 50), "cpu_p90": np.percentile(ms[1], 90),
            "faces_per_photo": faces / len(photos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project folder with data/ pulled (default: a fresh copy)")
    parser.add_argument("--images", type=int, default=100, help="photos to time the served path on")
    args = parser.parse_args()
    root = args.project or pulled_project()
    params = load_params(root / "params.yaml")
    photos = decoded_photos(root, args.images)
    print(f"latency over {len(photos)} photos, one thread; machine shared with other jobs, timings are noisy\n")
    print("| detector | feature set | champion | CV macro-F1 | test macro-F1 | wall ms p50 / p90 | "
          "CPU ms p50 / p90 | faces/photo |")
    print("|---|---|---|---|---|---|---|---|")
    for detector in ("hog", "haar"):
        clean = replace(params.clean, detector=detector)
        crops, labels = labelled_crops(root, clean)
        for feature_set in ("pixel_wavelet", "face_embedding"):
            name, cv_f1, test_f1, pipeline = best_model(feature_set, crops, labels, params)
            timing = latency(ActorClassifier(pipeline, detector_settings(clean), clean.crop_size), photos)
            print(f"| {detector} | {feature_set} | {name.split('/', 1)[1]} | {cv_f1:.3f} | {test_f1:.3f} | "
                  f"{timing['wall_p50']:.0f} / {timing['wall_p90']:.0f} | {timing['cpu_p50']:.0f} / "
                  f"{timing['cpu_p90']:.0f} | {timing['faces_per_photo']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
