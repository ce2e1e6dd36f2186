"""`POST /feedback`: a user reports the answer for one face as wrong and agrees to let this server keep it.

The client sends the photo again with the face's box, its own answer and `consent=true`. What the model said is
not taken from the client: the photo is classified again here and the model's answer is the one for the
detected face that matches the box (IoU >= 0.5). Only then is the report kept (bbt.review.feedback.FeedbackStore).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from bbt import UNKNOWN
from bbt.model.face_prediction import FacePrediction
from bbt.review.feedback import FeedbackError, FeedbackFull, FeedbackStore, photo_suffix
from bbt.serving.contract import ERRORS, ErrorBody, FaceBox, ModelInfo
from bbt.serving.upload_limits import UploadTooLarge, error_response
from bbt.vision.faces import Box
from bbt.vision.images import ImageError

ROUTE = "/feedback"
# A reported box is the face the model found when its overlap with it is at least this (as clean matches reviews).
MATCH_IOU = 0.5
BOX_FIELDS = ("x", "y", "w", "h")
CONSENT = "true"
HOW = (f"POST {ROUTE} takes multipart/form-data: the photo in the file field 'image', the face's box as "
       "'x', 'y', 'w', 'h' (as /classify answered it), 'label' (your answer) and 'consent=true'")
OFF = ("feedback is off on this server: it keeps no photos (params.yaml serve.feedback_dir is empty, or the "
       "deployment was not started with --keep-feedback); nothing was stored")


class KeptFace(BaseModel):
    box: FaceBox
    model_label: str = Field(description="The model's answer for that face, found by classifying the photo again.")
    model_confidence: float
    user_label: str = Field(description="Your answer: an actor, or 'unknown' for not one of the four.")
    model_version: str


class FeedbackKept(BaseModel):
    id: str = Field(description="The stored report's id: <UTC time>-<photo sha256[:12]>-<box x>-<box y>.")
    kept: KeptFace
    photo_bytes: int = Field(description="The photo, kept exactly as uploaded.")
    message: str


OPENAPI_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", *BOX_FIELDS, "label", "consent"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The photo, as sent to /classify."},
        **{name: {"type": "integer", "description": f"The face's box {name}, as /classify answered it."}
           for name in BOX_FIELDS},
        "label": {"type": "string",
                  "description": f"Your answer for that face: a person the model names (its classes, e.g. in "
                                 f"/model-card), or '{UNKNOWN}' (not one of them)."},
        "consent": {"type": "string", "enum": [CONSENT],
                    "description": "The user agreed that this server keeps the photo and the answers."},
    }}}}}}

FEEDBACK_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorBody, "description": "No consent=true, a bad answer or box, a bad image, or no detected "
                                             "face matching the box (IoU >= 0.5); nothing was stored"},
    403: {"model": ErrorBody, "description": "Feedback is off on this server (serve.feedback_dir is empty)"},
    409: {"model": ErrorBody, "description": "The same report (photo, box, second) is already kept"},
    507: {"model": ErrorBody, "description": "The feedback store is full (serve.feedback_max_mb)"},
}


class FeedbackService(Protocol):
    """What the route needs from the running service."""

    feedback: FeedbackStore | None
    max_bytes: int
    model_info: ModelInfo
    classes: list[str]  # the people the served model names

    async def answer(self, data: bytes, name: str) -> tuple[list[FacePrediction], tuple[int, int]] | JSONResponse: ...


class BadReport(ValueError):
    """A report the route refuses with a 400; the message names the field and the fix."""


def matching_face(faces: list[FacePrediction], box: Box) -> FacePrediction | None:
    """The detected face that overlaps `box` most, if that overlap reaches MATCH_IOU."""
    best = max(faces, key=lambda face: face.box.iou(box), default=None)
    return best if best is not None and best.box.iou(box) >= MATCH_IOU else None


def reported_box(form: Any) -> Box:
    values = {}
    for name in BOX_FIELDS:
        raw = form.get(name)
        try:
            values[name] = int(str(raw))
        except ValueError:
            raise BadReport(f"the box field {name!r} is {'missing' if raw is None else repr(raw)}: send the face's "
                            "box as whole numbers x, y, w, h, as /classify answered it") from None
    box = Box(**values)
    if box.w <= 0 or box.h <= 0:
        raise BadReport(f"the box {box_text(box)} has no area: send the face's box as /classify answered it")
    return box


def box_text(box: Box) -> str:
    return f"x={box.x}, y={box.y}, w={box.w}, h={box.h}"


def read_report(form: Any, classes: list[str]) -> tuple[UploadFile, Box, str]:
    """The photo, box and user's answer (one of `classes` or UNKNOWN) of a form that carries the user's consent;
    BadReport otherwise."""
    consent = form.get("consent")
    if not isinstance(consent, str) or consent.strip().lower() != CONSENT:
        raise BadReport("nothing was stored: the form has no consent=true. Send it only once the user has agreed "
                        "that this server keeps the photo, the box, both answers and the model version")
    label = form.get("label")
    labels = [*classes, UNKNOWN]
    if not isinstance(label, str) or label not in labels:
        raise BadReport(f"the answer 'label' = {label!r} is not one of {', '.join(labels)} "
                        f"('{UNKNOWN}' = not one of them)")
    box = reported_box(form)
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise BadReport("the form has no file in the field 'image': send the photo again, as sent to /classify")
    return image, box, label


async def report_wrong_answer(service: FeedbackService, request: Request) -> JSONResponse:
    """The whole route: every refusal is a JSON error and keeps nothing; a kept report answers 201."""
    store = service.feedback
    if store is None:
        return error_response(403, OFF)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return error_response(415, HOW)
    form = await request.form(max_files=1, max_fields=len(BOX_FIELDS) + 4, max_part_size=service.max_bytes)
    try:
        image, box, label = read_report(form, service.classes)
    except BadReport as err:
        return error_response(400, str(err))
    data = await image.read()
    if len(data) > service.max_bytes:  # the body's limit leaves room for the form's fields, not a larger photo
        return error_response(413, UploadTooLarge(service.max_bytes).detail)
    answer = await service.answer(data, "the photo in 'image'")
    if isinstance(answer, JSONResponse):
        return answer
    faces, _ = answer
    face = matching_face(faces, box)
    if face is None:
        found = "; ".join(box_text(f.box) for f in faces) or "none"
        return error_response(400, f"no face the model finds in this photo matches the box {box_text(box)} "
                                   f"(faces found: {found}): send a box exactly as /classify answered it")
    if face.label == label:
        return error_response(400, f"the model already answers {label!r} for the face at {box_text(box)}: "
                                   "report only an answer you think is wrong; nothing was stored")
    try:
        item = await asyncio.to_thread(store.add, data, photo_suffix(data), face.box, face.label, face.confidence,
                                       label, service.model_info.version)
    except FeedbackFull as err:
        return error_response(507, str(err))
    except (FeedbackError, ImageError) as err:
        return error_response(409 if isinstance(err, FeedbackError) else 400, str(err))
    kept = FeedbackKept(id=item.id, photo_bytes=len(data),
                        kept=KeptFace(box=FaceBox(**item.box.as_dict()), model_label=item.model_label,
                                      model_confidence=item.model_confidence, user_label=item.user_label,
                                      model_version=item.model_version),
                        message="stored on this server, for retraining: the photo, that box, the model's answer, "
                                "your answer and the model version")
    return JSONResponse(kept.model_dump(), status_code=201)
