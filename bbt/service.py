"""The champion over HTTP: a BentoML service with the drop-box page, `/classify` and the legacy `/classify_image`.

Run it with `bbt serve` (imports the champion into the BentoML store, then `bentoml serve bbt.service:ActorService`).
The routes live in a FastAPI app mounted on the service, so every request is parsed by our own code: each bad
input gets a clear 4xx `{"error": ...}` and nothing makes the server fetch a URL (BentoML's own multipart parser
downloads string fields that look like URLs).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import bentoml
import cv2
import prometheus_client
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bbt.admission import MB, Admission, Busy, Ticket
from bbt.config import SERVER_TIMEOUT_S, ServeParams, load_params
from bbt.errors import ModelError
from bbt.images import SUPPORTED_FOR_PEOPLE, ImageError, decode_cost, decode_photo
from bbt.openset import Timer
from bbt.predict import ActorClassifier, FacePrediction

log = logging.getLogger("bbt.service")

MODEL_NAME = "bbt-actor-classifier"
WEB_DIR = Path(__file__).with_name("web")
# A data URL carries base64 (4 bytes per 3) plus its header: the legacy route's body may be this much larger.
# Old pages post it URL-encoded, where '+' and '/' (1 in 32 base64 characters) take 3 bytes each: 1.0625x more,
# and a margin for photos whose base64 has more of them.
BASE64_GROWTH = 4 / 3 * 1.1
ENVELOPE_BYTES = 64 * 1024
# An upload is in memory as the body's chunks, the parsed form part and the bytes read from it.
UPLOAD_COPIES = 3
TICKET = "bbt.admission_ticket"  # the ASGI scope key of a request's admission ticket
# Bodies over the limit are read and thrown away up to this size so the client sees the 413, then closed.
DRAIN_LIMIT_BYTES = 64 * MB
# Requests classified at once per worker process: OpenCV and Pillow release the GIL, so two keep a core busy
# while one waits on Python; more only multiply the memory of large photos in flight.
THREADS_PER_WORKER = 2
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc mallopt parameters

# BentoML serves these at /metrics, summed over its worker processes.
STAGE_SECONDS = prometheus_client.Histogram(
    name="bbt_stage_seconds",
    documentation="Seconds spent per request in each inference stage (decode, detect, features, classify).",
    labelnames=["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REJECTED = prometheus_client.Counter(
    name="bbt_rejected_requests",
    documentation="Requests refused with a 4xx, a 503 (busy) or a 504 (timed out), by HTTP status.",
    labelnames=["status"],
)
FACES = prometheus_client.Counter(
    name="bbt_faces",
    documentation="Faces classified, by label ('unknown': not one of the four).",
    labelnames=["label"],
)


# ---- the HTTP contract, as pydantic models: they are the OpenAPI schema --------------------------------------

class FaceBox(BaseModel):
    x: int
    y: int
    w: int
    h: int


class Face(BaseModel):
    box: FaceBox = Field(description="In the uploaded image's pixel coordinates (after EXIF rotation).")
    label: str = Field(description="howard, leonard, raj or sheldon; 'unknown' when the face is not one of the "
                                   "four (its distance is over the model's learned threshold).")
    closest_actor: str = Field(description="The actor the face resembles most, even when the label is 'unknown'.")
    confidence: float = Field(description="The classifier's probability of closest_actor among the four actors. "
                                          "It assumes the face is one of them: it is not a probability that the "
                                          "face is that actor rather than anyone else; distance decides that.")
    probabilities: dict[str, float] = Field(description="The four actors' probabilities (same caveat).")
    distance: float = Field(description="The open-set rule's distance (nearest_face: Euclidean distance in face-"
                                        "embedding space to the closest training face of closest_actor).")
    threshold: float = Field(description="The largest distance the model names an actor at, learned by "
                                         "cross-validation for a target false-accept rate on strangers.")


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


PhotoUpload = Annotated[UploadFile, File(description=f"A {SUPPORTED_FOR_PEOPLE} photo")]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in ((400, "Missing field or bad image"), (413, "Upload too large"),
                        (415, "Not multipart/form-data"),
                        (503, ("Busy: this worker holds serve.max_pending photos, or photos filling its "
                               "serve.worker_memory_mb; retry after the Retry-After header's seconds")),
                        (504, "The photo took longer than serve.timeout_s; its work was stopped"))
}


# ---- errors: every one a JSON {"error": ...} -----------------------------------------------------------------

class UploadTooLarge(HTTPException):
    """Raised while the body streams in, as soon as it passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is over the {limit / MB:g} MB limit: send a smaller photo "
                              "(resize or re-export it as JPEG)")


class TimedOut(Exception):
    """The photo's deadline (serve.timeout_s after its upload was read) passed; its work stops at the next stage."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if 400 <= status < 500 or status in (503, 504):
        REJECTED.labels(status=str(status)).inc()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def busy_response(err: Busy) -> JSONResponse:
    return error_response(503, f"the service is busy ({err.why}); retry in {err.retry_after} s",
                          {"Retry-After": str(err.retry_after)})


def timed_out_response(timeout_s: float) -> JSONResponse:
    return error_response(504, f"classifying the photo took longer than the service's {timeout_s:g} s limit, "
                               "so it was stopped: retry later, or send a smaller photo")


def field_missing_message(request: Request) -> tuple[int, str]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return 415, (f"POST {request.url.path} needs multipart/form-data with the photo in the field 'image' "
                     f"(got {content_type or 'no content type'}), e.g. curl -F image=@photo.jpg URL/classify")
    return 400, ("the form has no file in the field 'image': send the photo as a file part named 'image', "
                 "e.g. curl -F image=@photo.jpg URL/classify")


# ---- the upload limit, enforced before the body is read ----------------------------------------------------

class UploadLimit:
    """ASGI middleware refusing request bodies over the route's limit with a 413, without buffering them, and
    uploads a full worker cannot take (by count, or by memory for the body) with a 503 before reading them.
    An admitted upload's ticket (bbt.admission) is in the scope, for the route to grow by the decoding's cost.

    The limits belong to the running service (they come from params.yaml when it starts).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = None
        if scope["type"] == "http" and scope["method"] == "POST":
            limit = bentoml.get_current_service().upload_limits.get(scope["path"])
        if limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= DRAIN_LIMIT_BYTES:
                await self._drain(receive)
            return await error_response(413, UploadTooLarge(limit).detail)(scope, receive, send)
        admission = bentoml.get_current_service().admission
        body_bytes = int(declared) if declared is not None and declared.isdigit() else limit
        try:
            ticket = admission.admit(UPLOAD_COPIES * body_bytes)
        except Busy as busy:
            await self._drain(receive)
            return await busy_response(busy)(scope, receive, send)
        scope[TICKET] = ticket
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a chunked body that never declared its length
                raise UploadTooLarge(limit)
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            admission.release(ticket)

    @staticmethod
    async def _drain(receive: Any) -> None:
        """Read and drop the body (so the client reads the answer), up to DRAIN_LIMIT_BYTES."""
        drained = 0
        while drained <= DRAIN_LIMIT_BYTES:
            message = await receive()
            drained += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return


class JsonErrors:
    """ASGI middleware for the whole server: a plain-text error BentoML's own router answers (an unknown path,
    a wrong method on its routes) becomes `{"error": ...}` like every other error of this service."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}

        async def rewrite(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"text/plain"):
                    held["start"], held["body"] = message, b""
                    return
            elif "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                status = held["start"]["status"]
                text = held["body"].decode("utf-8", "replace").strip() or "error"
                why = f"{scope['method']} {scope['path']}: {text.lower()}"
                if status == 404:
                    why += "; the routes are /, /classify, /classify_image, /livez, /readyz, /metrics and /docs.json"
                body = json.dumps({"error": why}).encode()
                headers = [(k, v) for k, v in held["start"].get("headers", [])
                           if k.lower() not in (b"content-type", b"content-length")]
                await send({**held["start"], "headers": [*headers, (b"content-type", b"application/json"),
                                                         (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


class Assets(StaticFiles):
    """The page's static files, without the page's template (served, filled in, at /)."""

    async def get_response(self, path: str, scope: dict) -> Any:
        if Path(path).name == "index.html":
            raise StarletteHTTPException(404, "not found: the page is at /")
        return await super().get_response(path, scope)


web = FastAPI(title="bbt actor classifier", version="1", docs_url=None, redoc_url=None, openapi_url=None,
              description="Finds the faces in a photo and names the Big Bang Theory actor of each.")
web.add_middleware(UploadLimit)


@web.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(*field_missing_message(request))


@web.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "the request body is not valid multipart/form-data: send the photo as the file field 'image'"
    return error_response(exc.status_code, detail)


def keep_uploads_in_memory(limit_bytes: int) -> None:
    """Let the multipart parser keep a file part up to the upload limit in memory.

    Starlette spools parts over 1 MB to a temporary file on disk, which the route then reads back: a disk write
    and read per typical 2-5 MB photo. The upload limit and serve.max_pending already bound what a worker holds.
    """
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit_bytes)


def return_big_frees_to_the_os() -> None:
    """Allocate big blocks (decoded photos) with mmap, so freeing them shrinks the process again.

    glibc raises its mmap threshold after the first big free and then keeps such blocks in its heap arenas
    (one per thread), where photos of different sizes fragment it: resident memory creeps up over a long run.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 * MB)
    libc.mallopt(M_ARENA_MAX, 2)


# ---- the service --------------------------------------------------------------------------------------------

@contextmanager
def timed(stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=stage).observe(time.perf_counter() - start)


def stage_timer(deadline: float) -> Timer:
    """`timed` for one photo, which stops it (TimedOut) at the start of a stage once `deadline` has passed."""
    def stage(name: str) -> AbstractContextManager[None]:
        if time.monotonic() > deadline:
            raise TimedOut
        return timed(name)
    return stage


@bentoml.service(
    workers="cpu_count",
    traffic={"timeout": SERVER_TIMEOUT_S, "max_concurrency": 256},
    metrics={"enabled": True},
)
@bentoml.asgi_app(web, path="/")
class ActorService:
    """Detect faces with the training detector settings and name the actor of each, with the champion model."""

    bento_model = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")

    def __init__(self) -> None:
        model_ref = type(self).bento_model
        if model_ref.stored is None:
            store = os.environ.get("BENTOML_HOME", "~/bentoml")
            raise ModelError(f"the BentoML store in {store} has no {model_ref.tag}: run `bbt import-champion` "
                             "(or `dvc repro`) first, or serve with `bbt serve`, which imports the champion")
        self.settings: ServeParams = load_params().serve
        self.classifier = ActorClassifier.from_mlflow(self.bento_model.path_of("mlflow_model"))
        self.classifier.warm_up()
        labels = self.bento_model.info.labels
        self.model_info = ModelInfo(name=MODEL_NAME, version=labels.get("registry_version", "unknown"),
                                    open_set_rule=self.classifier.model.rule)
        self.max_bytes = int(self.settings.max_upload_mb * MB)
        self.max_pixels = int(self.settings.max_megapixels * 1_000_000)
        self.legacy_max_bytes = int(self.max_bytes * BASE64_GROWTH) + ENVELOPE_BYTES
        # A fixed pool: each thread keeps its own cascades (and their buffers), so their number stays bounded.
        self.executor = ThreadPoolExecutor(THREADS_PER_WORKER, thread_name_prefix="classify")
        self.admission = Admission(self.settings.max_pending, int(self.settings.worker_memory_mb * MB),
                                   THREADS_PER_WORKER)
        cv2.setNumThreads(1)  # parallelism comes from workers x threads; OpenCV's own threads would oversubscribe
        return_big_frees_to_the_os()
        keep_uploads_in_memory(self.max_bytes)
        self.index_html = ((WEB_DIR / "index.html").read_text().replace("{{max_upload_bytes}}", str(self.max_bytes))
                           .replace("{{supported_formats}}", SUPPORTED_FOR_PEOPLE))
        self.upload_limits = {"/classify": self.max_bytes, "/classify_image": self.legacy_max_bytes}
        log.info("serving %s version %s (%s)", MODEL_NAME, self.model_info.version, self.bento_model.tag)

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    def classify_bytes(self, data: bytes, name: str, deadline: float = math.inf,
                       ) -> tuple[list[FacePrediction], tuple[int, int]]:
        """Decode untrusted bytes and classify every face; ImageError for anything that is not a usable image,
        TimedOut when `deadline` (time.monotonic) passes before one of the stages starts."""
        stage = stage_timer(deadline)
        with stage("decode"):
            photo = decode_photo(data, name, self.max_pixels, self.classifier.decode_side)
        faces = self.classifier.classify(photo, stage)
        for face in faces:
            FACES.labels(label=face.label).inc()
        return faces, photo.size

    async def run_classifier(self, data: bytes, name: str, ticket: Ticket,
                             ) -> tuple[list[FacePrediction], tuple[int, int]]:
        """classify_bytes on the worker's thread pool, within serve.timeout_s. Busy at once when the photo's
        decoding does not fit in the worker's memory budget beside the photos in it; TimedOut past the deadline.
        `ticket`: the request's admission (its upload), held until the work has ended, even after a timeout."""
        self.admission.grow(ticket, decode_cost(data, self.classifier.decode_side))
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.timeout_s
        work = self.executor.submit(self.timed_classify, data, name, deadline)
        self.admission.hold(ticket)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self.admission.release, ticket))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(work), self.settings.timeout_s)
        except TimeoutError:
            raise TimedOut from None  # wait_for cancelled the work if no thread had started it

    def timed_classify(self, data: bytes, name: str, deadline: float,
                       ) -> tuple[list[FacePrediction], tuple[int, int]]:
        start = time.perf_counter()
        try:
            return self.classify_bytes(data, name, deadline)
        finally:  # the work alone (not the wait), for the Retry-After estimate
            self.admission.observe(time.perf_counter() - start)

    @web.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.index_html)

    @web.get("/favicon.ico", include_in_schema=False)
    async def favicon(self) -> FileResponse:
        # Browsers ask for /favicon.ico on pages without a <link rel="icon">, e.g. /docs.json.
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    @web.post("/classify", response_model=Classification, responses=ERRORS,
              summary="Find every face in a photo and name the actor")
    async def classify(self, image: PhotoUpload, request: Request) -> Classification | JSONResponse:
        name = f"the uploaded file {image.filename!r}" if image.filename else "the uploaded file"
        try:
            faces, (width, height) = await self.run_classifier(await image.read(), name, request.scope[TICKET])
        except ImageError as err:
            return error_response(400, str(err))
        except Busy as err:
            return busy_response(err)
        except TimedOut:
            return timed_out_response(self.settings.timeout_s)
        return Classification(faces=[Face.model_validate(f.as_dict()) for f in faces], model=self.model_info,
                              image=ImageSize(width=width, height=height))

    @web.post("/classify_image", response_model=list[LegacyFace], responses=ERRORS,
              summary="The original system's route: a data URL in the form field image_data",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-www-form-urlencoded": {"schema": {
                      "type": "object", "required": ["image_data"],
                      "properties": {"image_data": {"type": "string", "description": "data:image/...;base64,..."}},
                  }}}}})
    async def classify_image(self, request: Request) -> JSONResponse:
        form = await request.form(max_files=1, max_fields=10,
                                  max_part_size=self.legacy_max_bytes)
        field = form.get("image_data")
        if not isinstance(field, str) or not field:
            return error_response(400, "the form has no field 'image_data': send the photo as a data URL "
                                       "(data:image/jpeg;base64,...) in the form field 'image_data'")
        try:
            data = decode_data_url(field)
            if len(data) > self.max_bytes:
                return error_response(413, UploadTooLarge(self.max_bytes).detail)
            faces, _ = await self.run_classifier(data, "the image in 'image_data'", request.scope[TICKET])
        except ImageError as err:
            return error_response(400, str(err))
        except Busy as err:
            return busy_response(err)
        except TimedOut:
            return timed_out_response(self.settings.timeout_s)
        legacy = [legacy_face(face, self.classifier.classes) for face in faces]
        # The original answered any origin; old pages served from elsewhere depend on it.
        return JSONResponse(legacy, headers={"Access-Control-Allow-Origin": "*"})


def legacy_face(face: FacePrediction, classes: list[str]) -> dict[str, Any]:
    """The original system's answer for one face: its class ('unknown' for a face that is not one of the four,
    which the original never said) and the four percentages in class_dictionary order."""
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


web.mount("/static", Assets(directory=WEB_DIR), name="static")
ActorService.add_asgi_middleware(JsonErrors)
