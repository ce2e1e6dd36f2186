"""Classify the faces in a photo with a registered model: the one inference path, used by the service."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bbt import CANT_TELL, UNKNOWN
from bbt.model.face_prediction import FacePrediction
from bbt.model.openset import OpenSetClassifier, Timer, untimed
from bbt.model.quality import sharpness
from bbt.vision.faces import Box, DetectorSettings, FaceDetector, crop_photo_face
from bbt.vision.images import Photo, decode_photo

# A logged photo model (bbt.model.photo_model) keeps its scikit-learn pipeline here: <model>/artifacts/pipeline.
PIPELINE_ARTIFACT = "pipeline"


def is_uri(location: str | Path) -> bool:
    """An MLflow model URI (models:/name@alias, runs:/id/model, s3://bucket/...), not a local folder: a scheme of
    two or more letters before ':/' (models:/ has one slash, so '://' alone misses it)."""
    return isinstance(location, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", location) is not None


def pipeline_path(model_path: Path) -> Path:
    """The scikit-learn model folder of a logged model folder: inside a photo model, or the folder itself (the
    pipeline's own folder, or a version logged before photo models, a plain sklearn flavor)."""
    inside = model_path / "artifacts" / PIPELINE_ARTIFACT
    return inside if (inside / "MLmodel").is_file() else model_path


class ActorClassifier:
    """Detect faces with the training detector settings, then answer each with the model's open-set rule.

    `classify(photo, timed)`: `timed(stage)` (a context manager factory) wraps each stage: detect, crop,
    features, classify. The service passes one that measures each stage and stops a photo past its deadline.
    """

    def __init__(self, model: OpenSetClassifier, detector: DetectorSettings, crop_size: int) -> None:
        if not isinstance(model, OpenSetClassifier):
            raise TypeError(f"expected an open-set model (bbt.model.openset.OpenSetClassifier), got "
                            f"{type(model).__name__}: retrain it with `dvc repro`")
        self.model = model
        self.detector = FaceDetector(detector)
        self.crop_size = crop_size
        self.classes = [str(c) for c in model.classes_]

    @classmethod
    def from_mlflow(cls, model_path: str | Path) -> ActorClassifier:
        """Load an MLflow model directory (or models:/ URI) logged by `bbt register`: the photo model, or the
        scikit-learn pipeline inside it."""
        import mlflow.sklearn
        from mlflow.models import Model

        local = pipeline_path(Path(mlflow.artifacts.download_artifacts(str(model_path))) if is_uri(model_path)
                              else Path(model_path))
        return cls.from_info(mlflow.sklearn.load_model(str(local)), Model.load(local / "MLmodel").metadata or {})

    @classmethod
    def from_info(cls, model: OpenSetClassifier, info: dict) -> ActorClassifier:
        """The classifier of an open-set model and what the search wrote about it (artifacts/model/model.json, or
        the logged model's metadata): its detector settings and crop size."""
        return cls(model, DetectorSettings.from_metadata(info["detector"]), int(info["crop_size"]))

    def warm_up(self) -> None:
        """Load what the model loads on first use (the embedding network: ~0.2 s) now, not in a request."""
        self.model.decide(np.zeros((1, self.crop_size, self.crop_size, 3), np.uint8))

    @property
    def decode_side(self) -> int:
        """The smallest longer side a JPEG may be reduced to when decoded (the training setting)."""
        return self.detector.settings.decode_side

    def classify_bytes(self, data: bytes, name: str, max_pixels: int, timed: Timer = untimed,
                       ) -> tuple[list[FacePrediction], tuple[int, int]]:
        """Decode untrusted bytes (`name` says what they are in errors) and classify every face: the faces and
        the photo's (width, height). ImageError for anything that is not a usable photo."""
        with timed("decode"):
            photo = decode_photo(data, name, max_pixels, self.decode_side)
        return self.classify(photo, timed), photo.size

    def detect(self, photo: Photo, timed: Timer = untimed) -> list[Box]:
        with timed("detect"):
            return self.detector.detect_photo(photo)

    def classify(self, photo: Photo | np.ndarray, timed: Timer = untimed) -> list[FacePrediction]:
        """Every detected face with its answer (boxes in the photo's own pixels), actors first, then by
        confidence; unknown faces last."""
        if isinstance(photo, np.ndarray):
            photo = Photo(photo, (photo.shape[1], photo.shape[0]))
        return self.answer_boxes(photo, self.detect(photo, timed), timed)

    def answer_boxes(self, photo: Photo, boxes: list[Box], timed: Timer = untimed) -> list[FacePrediction]:
        """The model's answer for each given box (in the photo's own pixels), actors first, then by confidence;
        unknown faces last. `bbt review` asks this of boxes a person reviews."""
        if not boxes:
            return []
        with timed("crop"):
            crops = np.stack([crop_photo_face(photo, box, self.crop_size) for box in boxes])
            sharp = sharpness(crops)
        decisions = self.model.decide(crops, timed, np.array([box.w for box in boxes]), sharp)
        faces = [
            FacePrediction(box, str(label), str(closest), round(float(row.max()), 4),
                           {c: round(float(p), 4) for c, p in zip(self.classes, row)},
                           round(float(distance), 4), round(float(decisions.threshold), 4),
                           self.cant_tell_reason(box, small, blurred, float(face_sharpness), float(distance),
                                                 decisions.band)
                           if label == CANT_TELL else "")
            for box, label, closest, row, distance, small, blurred, face_sharpness in zip(
                boxes, decisions.labels, decisions.closest, decisions.proba, decisions.distances,
                decisions.too_small, decisions.blurred, sharp)
        ]
        return sorted(faces, key=lambda f: (f.label in (UNKNOWN, CANT_TELL), f.label == CANT_TELL,
                                            -f.confidence, f.box.x, f.box.y))

    def cant_tell_reason(self, box: Box, too_small: bool, blurred: bool, face_sharpness: float, distance: float,
                         band: tuple[float, float] | None) -> str:
        """Why a face is answered "can't tell": too narrow or too blurred to judge, or a distance where known people
        and strangers overlap (distances at the threshold's precision, 3 decimals, as the page shows them)."""
        if too_small or band is None:
            return (f"face {box.w} px wide: the model judges faces from {self.model.min_face_width} px "
                    "(learned by cross-validation)")
        named_from = float(getattr(self.model, "min_sharpness_named", 0.0))
        if blurred and face_sharpness < named_from:
            return (f"face too blurred: sharpness {face_sharpness:.4f}, the model judges faces from "
                    f"{named_from:.4f} (learned by cross-validation)")
        if blurred:
            return (f"face too blurred to rule out the known people: sharpness {face_sharpness:.4f}, the model says "
                    f"\"not one of them\" from {self.model.min_sharpness:.4f} (learned by cross-validation)")
        return (f"distance {distance:.3f}: between {band[0]:.3f} and {band[1]:.3f}, where known people and strangers "
                "overlap (learned by cross-validation)")
