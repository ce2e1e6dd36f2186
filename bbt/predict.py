"""Classify the faces in a photo with a trained pipeline: the one inference path, used by the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from bbt.faces import Box, DetectorSettings, FaceDetector, crop_face

UNKNOWN = "unknown"


@dataclass(frozen=True)
class FacePrediction:
    box: Box
    label: str
    confidence: float
    probabilities: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"box": self.box.as_dict(), "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}


class ActorClassifier:
    """Detect faces with the training detector settings, then run the pipeline on their crops."""

    def __init__(self, pipeline: Pipeline, detector: DetectorSettings, crop_size: int,
                 confidence_threshold: float = 0.5) -> None:
        self.pipeline = pipeline
        self.detector = FaceDetector(detector)
        self.crop_size = crop_size
        self.confidence_threshold = confidence_threshold
        self.classes = [str(c) for c in pipeline.classes_]

    @classmethod
    def from_mlflow(cls, model_path: str | Path, confidence_threshold: float = 0.5) -> ActorClassifier:
        """Load an MLflow model directory (or models:/ URI) logged by `bbt register`."""
        import mlflow.sklearn
        from mlflow.models import Model

        local = Path(mlflow.artifacts.download_artifacts(str(model_path))) if "://" in str(model_path) \
            else Path(model_path)
        meta = Model.load(local / "MLmodel").metadata or {}
        return cls(mlflow.sklearn.load_model(str(local)), DetectorSettings(**meta["detector"]),
                   int(meta["crop_size"]), confidence_threshold)

    def warm_up(self) -> None:
        """Load what the pipeline loads on first use (the embedding network: ~0.2 s) now, not in a request."""
        self.pipeline.predict_proba(np.zeros((1, self.crop_size, self.crop_size, 3), np.uint8))

    def detect(self, image: np.ndarray) -> list[Box]:
        return self.detector.detect(image)

    def predict_proba(self, image: np.ndarray, boxes: list[Box]) -> np.ndarray:
        if not boxes:
            return np.empty((0, len(self.classes)))
        crops = np.stack([crop_face(image, box, self.crop_size) for box in boxes])
        return self.pipeline.predict_proba(crops)

    def classify(self, image: np.ndarray) -> list[FacePrediction]:
        """Every detected face with its label (or 'unknown' below the threshold), most confident first."""
        boxes = self.detect(image)
        proba = self.predict_proba(image, boxes)
        faces = []
        for box, row in zip(boxes, proba):
            best = int(np.argmax(row))
            confidence = float(row[best])
            label = self.classes[best] if confidence >= self.confidence_threshold else UNKNOWN
            faces.append(FacePrediction(box, label, round(confidence, 4),
                                        {c: round(float(p), 4) for c, p in zip(self.classes, row)}))
        return sorted(faces, key=lambda f: -f.confidence)
