"""Face descriptors for clustering the review queue: the pipeline's own 128-d dlib embeddings.

Reviewed faces (the anchors) take theirs from the featurize stage's product (artifacts/features/face_embedding.npz,
a row per face of artifacts/faces/faces.npz). Faces nobody reviewed are not in faces.npz: their crops come from
clean's detection cache (artifacts/cache/clean, exactly the crops clean cut; a photo missing there is detected
again with clean's own `detect_job`), and their embeddings from the same transformer featurize runs. Those are
kept in artifacts/cache/review/, one entry per face keyed by the photo's content, the box, clean's cache context
(detector settings, crop size, detection code) and the embedding code, so a second `bbt review` starts at once
and a changed photo, setting or model is described again. Not a DVC product: it is derived from products DVC
already tracks, and deleting it costs only time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bbt import artifacts
from bbt.config import Params
from bbt.errors import DataError
from bbt.model.feature_sets import FEATURE_SETS, build_features
from bbt.model.openset import EMBEDDING_SPACE
from bbt.model.quality import sharpness
from bbt.pipeline.clean import ImageJob, detect_job
from bbt.pipeline.detection_cache import DetectionCache
from bbt.vision.faces import Box, DetectorSettings

log = logging.getLogger(__name__)

DESCRIPTOR_CACHE = artifacts.ARTIFACTS / "cache" / "review" / "descriptors.npz"
SHARPNESS_MODULE = "bbt/model/quality.py"  # each face's sharpness is kept beside its descriptor


@dataclass(frozen=True)
class Anchors:
    """The reviewed faces: descriptors, their label (an actor, or UNKNOWN for a stranger), photo and box."""

    X: np.ndarray
    labels: np.ndarray
    images: tuple[str, ...]
    boxes: tuple[Box, ...]


def load_anchors(root: Path) -> Anchors:
    """The reviewed actors' and strangers' faces (rejected ones say nothing about who is who), with featurize's
    embeddings of them."""
    if not (root / artifacts.FACES).is_file():
        raise DataError(f"{root / artifacts.FACES} not found: run `dvc repro featurize` (the groups need the "
                        "reviewed faces and their embeddings)")
    with np.load(root / artifacts.FACES) as faces:
        labels, images, boxes = faces["labels"], faces["images"], faces["boxes"]
    path = root / artifacts.features_file(EMBEDDING_SPACE)
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro featurize` (the clusters use its face embeddings)")
    with np.load(path) as cached:
        X = cached["X"]
    keep = np.flatnonzero(labels != "")
    return Anchors(X[keep].astype(np.float64), labels[keep].astype(str),
                   tuple(str(images[i]) for i in keep), tuple(Box(*map(int, boxes[i])) for i in keep))


def _embedding_code(root: Path) -> str:
    digest = hashlib.sha256()
    for module in (*FEATURE_SETS[EMBEDDING_SPACE].modules, SHARPNESS_MODULE):
        digest.update(module.encode() + b"\0" + (root / module).read_bytes())
    return digest.hexdigest()


def describe_faces(root: Path, params: Params, faces: list[tuple[str, Box]]) -> np.ndarray:
    """A descriptor per (image under data.raw, box) as featurize computes it, from the cache where it has it."""
    return describe_and_measure(root, params, faces)[0]


def describe_and_measure(root: Path, params: Params, faces: list[tuple[str, Box]]) -> tuple[np.ndarray, np.ndarray]:
    """Per (image under data.raw, box): its descriptor as featurize computes it and its crop's sharpness
    (bbt.model.quality), from the cache where it has them."""
    raw = root / params.data.raw
    settings = DetectorSettings.of(params.clean)
    detections = DetectionCache(root / artifacts.CLEAN_CACHE, settings, params.clean.crop_size)
    code = _embedding_code(Path(__file__).parents[2])
    digests = {image: hashlib.md5((raw / image).read_bytes()).hexdigest() for image, _ in faces}
    keys = [hashlib.sha256(f"{digests[image]}\0{box}\0{detections.context}\0{code}".encode()).hexdigest()
            for image, box in faces]
    cache_path = root / DESCRIPTOR_CACHE
    known: dict[str, np.ndarray] = {}  # the descriptor, then the sharpness
    if cache_path.is_file():
        with np.load(cache_path) as cached:
            if "sharpness" in cached.files:  # a cache of before kept no sharpness: describe again
                known = dict(zip(cached["keys"].astype(str), np.column_stack([cached["X"], cached["sharpness"]])))
    todo: dict[str, list[int]] = defaultdict(list)
    for n, ((image, _), key) in enumerate(zip(faces, keys)):
        if key not in known:
            todo[image].append(n)
    if todo:
        log.info("describing %d faces of %d photos (kept in %s)", sum(map(len, todo.values())), len(todo),
                 cache_path)
        crops = []
        for image, indices in sorted(todo.items()):
            found = detections.load(digests[image]) or detect_job(ImageJob((image,), ()), raw, settings,
                                                                   params.clean.crop_size)
            by_box = dict(zip(found.boxes, found.crops if found.crops is not None else []))
            for n in indices:
                if faces[n][1] not in by_box:
                    raise DataError(f"{image}: clean found no box {faces[n][1].as_dict()} in it any more: run "
                                    "`dvc repro clean` so the queue matches the photos")
                crops.append((n, by_box[faces[n][1]]))
        embedder = build_features(EMBEDDING_SPACE, params.featurize).fit()
        stacked = np.stack([crop for _, crop in crops])
        X = np.column_stack([embedder.transform(stacked), sharpness(stacked)])
        for (n, _), row in zip(crops, X):
            known[keys[n]] = row
        _save(cache_path, known)
    if not faces:
        return np.zeros((0, 128)), np.zeros(0)
    rows = np.stack([known[key] for key in keys]).astype(np.float64)
    return rows[:, :-1], rows[:, -1]


def _save(path: Path, known: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(known)
    temporary = path.with_name(f".{path.stem}.tmp.npz")
    rows = np.stack([known[k] for k in names])
    np.savez(temporary, keys=np.array(names), X=rows[:, :-1], sharpness=rows[:, -1])
    os.replace(temporary, path)

