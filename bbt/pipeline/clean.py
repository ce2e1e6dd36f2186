"""Stage `clean`: decode every raw photo, detect faces, keep the ones a person accepted.

Per photo the expensive work is pure (`detect_job`: decode, detect, crop), so it can be mapped over processes,
Prefect tasks or a Dask cluster, and its result is kept in a cache by the photo's content hash
(bbt/pipeline/detection_cache.py): a run detects only the photos it has not seen with these settings. `run_clean` maps
the rest over a local process pool, or over batches with the `map_batches` it is given (the Prefect flow's),
sorts every face by its reviews (`sort_faces`, cheap) and writes the stage products.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from bbt import UNKNOWN, artifacts
from bbt.config import CleanParams, DataParams, Params, validate_cast
from bbt.errors import DataError
from bbt.pipeline.annotations import (
    Annotation,
    Correction,
    apply_corrections,
    load_annotations,
    load_corrections,
    match,
)
from bbt.pipeline.detection_cache import Detected, DetectionCache
from bbt.pipeline.progress import progress
from bbt.vision.faces import Box, DetectorSettings, FaceDetector, crop_photo_face
from bbt.vision.images import ImageError, decode_photo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cast:
    """The people the model is trained to name (params.yaml's `cast`), and the fewest accepted faces each needs."""

    names: tuple[str, ...]
    min_faces: int
    why: str  # what min_faces comes from, for the message when a person has fewer


def fewest_faces(cv_folds: int, audit_folds: int, test_size: float) -> int:
    """The fewest faces of a person that leave at least one fold's worth per CV fold in the training split: the
    stratified split holds out up to ceil(n * test_size) of them, and the search's (and the audit's) stratified
    folds need a face of every person in each fold."""
    folds = max(cv_folds, audit_folds)
    n = folds
    while n - math.ceil(round(n * test_size, 9)) < folds:
        n += 1
    return n


def cast_of(params: Params) -> Cast:
    """params.yaml's cast and the faces each person needs (run_clean checks the cast: a missing params.yaml has
    none)."""
    folds, test_size = params.search.cv_folds, params.split.test_size
    n = fewest_faces(folds, params.audit.folds, test_size)
    return Cast(tuple(params.cast), n, f"after the test split (split.test_size {test_size:g}) holds out its share, "
                                      f"the cross-validation needs a face in each of its {max(folds, params.audit.folds)} "
                                      "folds (search.cv_folds, audit.folds)")


def outside_cast(annotations: list[Annotation], corrections: list[Correction],
                 cast: tuple[str, ...]) -> tuple[list[Annotation], list[Correction], Counter]:
    """Faces accepted as someone the cast does not list are someone else's, strangers to this model: the reviews
    with those faces made `stranger`, and how many there are per name. A cast without the name trains exactly as
    if the faces had been reviewed as strangers."""
    def as_stranger(annotation: Annotation) -> Annotation:
        if annotation.review == "accepted" and annotation.label not in cast:
            return replace(annotation, review="stranger", label=None)
        return annotation

    names = Counter(a.label for a in annotations if a.review == "accepted" and a.label not in cast)
    return ([as_stranger(a) for a in annotations],
            [replace(c, corrected=as_stranger(c.corrected)) for c in corrections], names)


def check_faces_per_person(results: Sequence[ImageResult], cast: Cast, corrections: Path) -> None:
    """A DataError naming every cast member with fewer accepted (detected) faces than the training needs."""
    found = Counter(f.label for r in results for f in r.faces if f.status == "accepted")
    short = {name: found.get(name, 0) for name in cast.names if found.get(name, 0) < cast.min_faces}
    if short:
        counts = ", ".join(f"{name!r} has {n}" for name, n in short.items())
        raise DataError(f"too few faces for the cast: {counts}; each person needs at least {cast.min_faces} "
                        f"accepted faces the detector finds ({cast.why}). Accept more faces of them in `bbt review` "
                        f"(rows `label=<name>,review=accepted` in {corrections}), or take them out of `cast` in "
                        "params.yaml")


@dataclass(frozen=True)
class ImageJob:
    """One distinct photo: its paths (byte-identical copies share one job), their reviews, its content hash."""

    paths: tuple[str, ...]
    annotations: tuple[Annotation, ...]
    digest: str = ""


@dataclass
class Face:
    image: str
    box: Box
    status: str  # accepted | stranger | rejected | unreviewed
    label: str | None
    crop: np.ndarray | None = None
    reviewed_in: str = ""  # annotations | corrections (the second review)
    first_review: str = ""  # annotations.csv's verdict (the second review may have changed it)


@dataclass
class ImageResult:
    paths: tuple[str, ...]
    error: str | None = None
    faces: list[Face] = field(default_factory=list)
    missed: list[Annotation] = field(default_factory=list)


def list_images(raw_dir: Path) -> list[str]:
    """Image paths relative to raw_dir, sorted; a clear error when the data was never pulled."""
    if not raw_dir.is_dir():
        raise DataError(
            f"{raw_dir} not found: run `dvc pull data.dvc` to fetch the dataset "
            "(the remote 'store' must be reachable: `dvc remote list`)"
        )
    paths = sorted(str(p.relative_to(raw_dir)) for p in raw_dir.rglob("*") if p.is_file())
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "surrogateescape")  # the bytes as they are on disk
            raise DataError(f"{raw_dir}: the file name {shown!r} is not valid UTF-8: rename it (names are written "
                            "to CSV files and shown on pages) and run `dvc add data` again") from None
    if not paths:
        raise DataError(f"{raw_dir} has no files: run `dvc pull data.dvc`, or `dvc add data` after adding photos")
    return paths


def plan_jobs(raw_dir: Path, paths: Sequence[str], annotations: Sequence[Annotation]) -> list[ImageJob]:
    """Group byte-identical files into one job each, carrying every review of any of their paths."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_hash[hashlib.md5((raw_dir / path).read_bytes()).hexdigest()].append(path)
    reviews: dict[str, list[Annotation]] = defaultdict(list)
    for annotation in annotations:
        reviews[annotation.image].append(annotation)
    return sorted(
        (ImageJob(tuple(group), tuple(a for p in group for a in reviews[p]), digest)
         for digest, group in by_hash.items()),
        key=lambda job: job.paths,
    )


def detect_job(job: ImageJob, raw_dir: Path, settings: DetectorSettings, crop_size: int,
               detector: FaceDetector | None = None) -> Detected:
    """Decode one photo, detect its faces and crop each one: the expensive, review-free part of clean."""
    try:
        photo = decode_photo((raw_dir / job.paths[0]).read_bytes(), name=job.paths[0], min_side=settings.decode_side)
    except (ImageError, OSError) as err:
        return Detected(error=str(err))
    detector = detector or _process_detector(settings)
    boxes = tuple(detector.detect_photo(photo))
    crops = np.stack([crop_photo_face(photo, box, crop_size) for box in boxes]) if boxes else \
        np.zeros((0, crop_size, crop_size, 3), np.uint8)
    return Detected(boxes, crops)


def sort_faces(job: ImageJob, detected: Detected, iou_threshold: float) -> ImageResult:
    """Sort each detected face by its human review; list the accepted faces the detector missed."""
    result = ImageResult(job.paths, error=detected.error)
    if detected.error:
        return result
    for box, crop in zip(detected.boxes, detected.crops if detected.crops is not None else []):
        review = match(box, list(job.annotations), iou_threshold)
        if review is None:
            result.faces.append(Face(job.paths[0], box, "unreviewed", None))
        else:
            # Every reviewed face keeps its crop: actors train, strangers teach "unknown", the audit proposes
            # verdicts for the rejected ones.
            result.faces.append(Face(job.paths[0], box, review.review, review.label, crop,
                                     review.source, review.first_review or review.review))
    result.missed = [
        a for a in job.annotations
        if a.review == "accepted" and not any(a.box.iou(b) >= iou_threshold for b in detected.boxes)
    ]
    return result


_DETECTORS: dict[DetectorSettings, FaceDetector] = {}


def _process_detector(settings: DetectorSettings) -> FaceDetector:
    # One detector per worker process, reused across its images.
    if settings not in _DETECTORS:
        _DETECTORS[settings] = FaceDetector(settings)
    return _DETECTORS[settings]


def detect_batch(
    jobs: Sequence[ImageJob], raw_dir: Path, settings: DetectorSettings, crop_size: int
) -> list[Detected]:
    """The per-photo work over a batch: the unit that Prefect and Dask map over."""
    return [detect_job(job, raw_dir, settings, crop_size) for job in jobs]


# Below this many photos to detect, a process pool costs more to start than it saves.
POOL_MIN_PHOTOS = 16


def detect_jobs(
    jobs: Sequence[ImageJob], raw_dir: Path, params: CleanParams, on_result: Callable[[], None] | None = None
) -> list[Detected]:
    """Run detect_job over every job on `params.workers` processes, in job order."""
    args = (raw_dir, DetectorSettings.of(params), params.crop_size)
    if params.workers == 1 or len(jobs) < POOL_MIN_PHOTOS:
        results = []
        for job in jobs:
            results.append(detect_job(job, *args))
            if on_result:
                on_result()
        return results
    with ProcessPoolExecutor(max_workers=params.workers) as pool:
        futures = [pool.submit(detect_job, job, *args) for job in jobs]
        results = []
        for future in futures:
            results.append(future.result())
            if on_result:
                on_result()
        return results


def map_images(
    jobs: Sequence[ImageJob], raw_dir: Path, params: CleanParams, on_result: Callable[[], None] | None = None
) -> list[ImageResult]:
    """Detect and sort the faces of every job on `params.workers` processes, in job order (no cache)."""
    return [sort_faces(job, detected, params.iou_threshold)
            for job, detected in zip(jobs, detect_jobs(jobs, raw_dir, params, on_result))]


BatchWork = Callable[[Sequence[ImageJob]], list[Detected]]
# Given the batches and the work for one batch, return each batch's results in batch order.
BatchMapper = Callable[[list[list[ImageJob]], BatchWork], Iterable[list[Detected]]]


def map_batches_with(
    map_batches: BatchMapper, jobs: Sequence[ImageJob], raw_dir: Path, params: CleanParams, batch_size: int
) -> list[Detected]:
    """Run detect_batch over batches of jobs with a caller's mapper (Prefect tasks, Dask), in job order."""
    if not jobs:
        return []
    # An absolute folder, since the work may run in another process or on another machine with the same mount.
    work = partial(detect_batch, raw_dir=raw_dir.resolve(), settings=DetectorSettings.of(params),
                   crop_size=params.crop_size)
    batches = [list(jobs[i:i + batch_size]) for i in range(0, len(jobs), batch_size)]
    return [result for batch in map_batches(batches, work) for result in batch]


def detect_with_cache(
    jobs: Sequence[ImageJob], raw_dir: Path, params: CleanParams, cache: DetectionCache,
    map_batches: BatchMapper | None, batch_size: int,
) -> list[Detected]:
    """Every job's detections: from the cache where it has them, else detected now (and then cached)."""
    found = {job.digest: cache.load(job.digest) for job in jobs}
    todo = [job for job in jobs if found[job.digest] is None]
    log.info("clean: %d of %d photos detected before with these settings (%s); detecting %d",
             len(jobs) - len(todo), len(jobs), cache.folder, len(todo))
    if map_batches is not None:
        fresh = map_batches_with(map_batches, todo, raw_dir, params, batch_size)
    else:
        with progress("clean: detecting faces", total=len(todo)) as advance:
            fresh = detect_jobs(todo, raw_dir, params, on_result=advance)
    for job, detected in zip(todo, fresh):
        cache.save(job.digest, detected)
        found[job.digest] = detected
    cache.prune()
    return [found[job.digest] for job in jobs]


def summarize(jobs: Sequence[ImageJob], results: Sequence[ImageResult], cast: tuple[str, ...]) -> dict:
    """Per-actor counts (by folder) of images, failures and faces, plus totals; a DVC metric."""
    report: dict[str, dict[str, int]] = {}
    def actor_of(path: str) -> str:
        return path.split("/", 1)[0]
    for job, result in zip(jobs, results):
        for path in job.paths:
            counts = report.setdefault(actor_of(path), Counter())
            counts["images"] += 1
            if len(job.paths) > 1:
                counts["duplicates"] += 1
        # A duplicated photo's faces count once, under its first folder.
        counts = report[actor_of(job.paths[0])]
        if result.error:
            counts["unreadable"] += 1
            continue
        if not result.faces:
            counts["no_face"] += 1
        for face in result.faces:
            counts[face.status] += 1
        counts["missed_annotations"] += len(result.missed)
    keys = ["images", "unreadable", "no_face", "accepted", "stranger", "rejected", "unreviewed", "duplicates",
            "missed_annotations"]
    per_actor = {actor: {k: int(report.get(actor, {}).get(k, 0)) for k in keys} for actor in sorted(report)}
    totals = {k: sum(v[k] for v in per_actor.values()) for k in keys}
    labels = Counter(f.label for r in results for f in r.faces if f.status == "accepted")
    reviewed = sum(a.review == "accepted" for job, r in zip(jobs, results) if not r.error for a in job.annotations)
    return {
        "actors": per_actor,
        "total": totals,
        "faces_per_label": {a: int(labels.get(a, 0)) for a in cast},
        "stranger_faces": totals["stranger"],
        # Share of the accepted annotation boxes the detector finds (IoU >= clean.iou_threshold).
        "detector_recall": round(1 - totals["missed_annotations"] / reviewed, 4) if reviewed else None,
    }


def write_outputs(results: Sequence[ImageResult], report: dict, params: CleanParams) -> None:
    """Write the labelled crops (with how they were made), the list of every detection, the report and its
    headline (the DVC metric)."""
    if not any(f.status == "accepted" for r in results for f in r.faces):
        raise DataError("no accepted face was found: check data/annotations.csv and the clean.* params")
    reviewed = [f for r in results for f in r.faces if f.crop is not None]
    artifacts.FACES.parent.mkdir(parents=True, exist_ok=True)
    # Not compressed: zlib took a third of a clean run that found every photo in the cache.
    np.savez(
        artifacts.FACES,
        crops=np.stack([f.crop for f in reviewed]),
        # An actor's name, UNKNOWN for a stranger, "" for a rejected face (used by nothing but the audit).
        labels=np.array([f.label if f.status == "accepted" else UNKNOWN if f.status == "stranger" else ""
                         for f in reviewed]),
        status=np.array([f.status for f in reviewed]),
        first_review=np.array([f.first_review for f in reviewed]),
        images=np.array([f.image for f in reviewed]),
        reviewed_in=np.array([f.reviewed_in for f in reviewed]),
        boxes=np.array([[f.box.x, f.box.y, f.box.w, f.box.h] for f in reviewed]),
        settings=json.dumps({"detector": asdict(DetectorSettings.of(params)), "crop_size": params.crop_size}),
    )
    rows = [
        {"image": f.image, **f.box.as_dict(), "status": f.status, "label": f.label or ""}
        for r in results for f in r.faces
    ]
    rows += [{"image": r.paths[0], "x": "", "y": "", "w": "", "h": "", "status": "unreadable",
              "label": r.error or ""} for r in results if r.error]
    pd.DataFrame(rows, columns=["image", "x", "y", "w", "h", "status", "label"]).to_csv(
        artifacts.DETECTIONS, index=False
    )
    artifacts.write_json(artifacts.CLEAN_REPORT, report)
    artifacts.write_json(artifacts.CLEAN_METRICS, headline(report))


def headline(report: dict) -> dict:
    """The DVC metric: totals of photos, actors' and strangers' faces kept, and the detector's recall."""
    total = report["total"]
    return {"images": total["images"], "faces": total["accepted"], "strangers": total["stranger"],
            "detector_recall": report["detector_recall"]}


def reviewed_annotations(data: DataParams) -> tuple[list[Annotation], list[Correction]]:
    """annotations.csv with the second review (data.corrections) applied, and those corrections."""
    annotations = load_annotations(data.annotations, data.raw)
    corrections = load_corrections(data.corrections, annotations, data.raw)
    return apply_corrections(annotations, corrections), corrections


def run_clean(
    data: DataParams, params: CleanParams, cast: Cast, map_batches: BatchMapper | None = None, batch_size: int = 32
) -> dict:
    """The whole stage: list, dedupe, detect in parallel what the cache lacks, match reviews, write products;
    returns the report.

    Detection runs on a local process pool, or over batches of `batch_size` images with `map_batches`.
    """
    paths = list_images(data.raw)
    validate_cast(cast.names, "params.yaml")
    annotations, corrections = reviewed_annotations(data)
    annotations, corrections, others = outside_cast(annotations, corrections, cast.names)
    for name, n in sorted(others.items()):
        log.warning("%s or %s accept %d face(s) as %r, who is not in `cast` (params.yaml): they train as strangers "
                    "(not one of the cast). To enrol %s, add the name to cast: in params.yaml and run `dvc repro`",
                    data.corrections, data.annotations, n, name, name)
    for correction in corrections:
        before, after = correction.original, correction.corrected
        log.debug("second review (%s): %s %s %s -> %s: %s", data.corrections, after.image, after.box,
                  "unreviewed" if before is None else before.label or before.review, after.label or after.review,
                  correction.reason)
    kinds = Counter(c.kind for c in corrections)
    log.info("second review (%s): %d verdicts applied (%s); `bbt -v clean` lists them", data.corrections,
             len(corrections), ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none")
    jobs = plan_jobs(data.raw, paths, annotations)
    for job in jobs:
        if len(job.paths) > 1:
            log.warning("byte-identical files, processed once: %s", " = ".join(job.paths))
    cache = DetectionCache(artifacts.CLEAN_CACHE, DetectorSettings.of(params), params.crop_size)
    detected = detect_with_cache(jobs, data.raw, params, cache, map_batches, batch_size)
    results = [sort_faces(job, found, params.iou_threshold) for job, found in zip(jobs, detected)]
    for result in results:
        if result.error:
            log.warning("skipped unreadable file: %s", result.error)
        for missed in result.missed:
            log.warning("accepted face %s in %s was not detected", missed.box, missed.image)
    check_faces_per_person(results, cast, data.corrections)
    report = summarize(jobs, results, cast.names)
    report["second_review"] = second_review_counts(corrections)
    write_outputs(results, report, params)
    log_report(report)
    return report


def second_review_counts(corrections: Sequence[Correction]) -> dict[str, dict[str, int]]:
    """Per actor folder and in total: how many boxes the second review made strangers, unusable, relabelled..."""
    per_folder: dict[str, Counter] = defaultdict(Counter)
    for correction in corrections:
        per_folder[correction.corrected.image.split("/", 1)[0]][correction.kind] += 1
    total = sum(per_folder.values(), Counter())
    return {**{folder: dict(sorted(c.items())) for folder, c in sorted(per_folder.items())},
            "total": dict(sorted(total.items()))}


def log_report(report: dict) -> None:
    for actor, counts in report["actors"].items():
        log.info("%-8s %s", actor, ", ".join(f"{k} {v}" for k, v in counts.items()))
    log.info("faces per label: %s", report["faces_per_label"])
