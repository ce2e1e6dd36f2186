"""The HTTP contract of the service, as pydantic models (they are the OpenAPI schema), and the original
system's answer format for its legacy route."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, Field

from bbt.model.face_prediction import FacePrediction
from bbt.vision.images import ImageError


class FaceBox(BaseModel):
    x: int
    y: int
    w: int
    h: int


class Face(BaseModel):
    box: FaceBox = Field(description="In the uploaded image's pixel coordinates (after EXIF rotation).")
    label: str = Field(description="howard, leonard, raj or sheldon; 'unknown' when the face is not one of the "
                                   "four (its distance is over the model's learned band of doubt); 'cant_tell' "
                                   "when the model cannot judge the face (see reason): too small, or a distance "
                                   "in the band where known people and strangers overlap (both edges learned by "
                                   "cross-validation and stored in the model).")
    closest_actor: str = Field(description="The actor the face resembles most, even when the label is 'unknown'.")
    confidence: float = Field(description="The classifier's probability of closest_actor among the four actors. "
                                          "It assumes the face is one of them: it is not a probability that the "
                                          "face is that actor rather than anyone else; distance decides that.")
    probabilities: dict[str, float] = Field(description="The four actors' probabilities (same caveat).")
    distance: float = Field(description="The open-set rule's distance (nearest_face: Euclidean distance in face-"
                                        "embedding space to the closest training face of closest_actor).")
    threshold: float = Field(description="The largest distance the model names an actor at, learned by "
                                         "cross-validation for a target false-accept rate on strangers.")
    reason: str = Field("", description="Why the label is 'cant_tell', e.g. 'face 20 px wide: the model judges "
                                        "faces from 28 px' or 'distance 0.570: between 0.538 and 0.591, where the "
                                        "four and strangers overlap'; empty otherwise.")


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="The MLflow registry version being served.")
    open_set_rule: str = Field(description="When a face is answered 'unknown' (see docs/models.md).")


class ImageSize(BaseModel):
    width: int
    height: int


class Classification(BaseModel):
    faces: list[Face] = Field(description="Most confident first; empty when no face is found.")
    model: ModelInfo
    image: ImageSize


class LegacyFace(BaseModel):
    class_: str = Field(alias="class")
    class_probability: list[float] = Field(description="Percentages, in class_dictionary order.")
    class_dictionary: dict[str, int]


class ErrorBody(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in ((400, "Missing field or bad image"), (413, "Upload too large"),
                        (415, "Not multipart/form-data"),
                        (503, ("Busy: this worker holds serve.max_pending photos, or photos filling its "
                               "serve.worker_memory_mb; retry after the Retry-After header's seconds")),
                        (504, "The photo took longer than serve.timeout_s; its work was stopped"))
}


def legacy_face(face: FacePrediction, classes: list[str]) -> dict[str, Any]:
    """The original system's answer for one face: its class ('unknown' for a face that is not one of the four,
    'cant_tell' for one the model cannot judge, too small or in the band of doubt: answers the original never
    gave) and the four percentages in
    class_dictionary order."""
    return {"class": face.label,
            "class_probability": [round(face.probabilities[c] * 100, 2) for c in classes],
            "class_dictionary": {c: i for i, c in enumerate(classes)}}


def decode_data_url(value: str) -> bytes:
    """The bytes of a base64 data URL (or of bare base64, as some old clients sent)."""
    header, _, payload = value.partition(",") if value.startswith("data:") else ("", "", value)
    if header and not header.endswith(";base64"):
        raise ImageError("'image_data' is a data URL without ;base64: send data:image/jpeg;base64,...")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("'image_data' is not valid base64: send the photo as data:image/jpeg;base64,...") from None
