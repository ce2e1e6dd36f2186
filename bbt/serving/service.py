"""The champion over HTTP: a BentoML service with the drop-box page, `/classify` and the legacy `/classify_image`.

Run it with `bbt serve` (imports the champion into the BentoML store, then `bentoml serve bbt.serving.service:ActorService`).
The routes live in a FastAPI app mounted on the service, so every request is parsed by our own code: each bad
input gets a clear 4xx `{"error": ...}` and nothing makes the server fetch a URL (BentoML's own multipart parser
downloads string fields that look like URLs).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import bentoml
import cv2
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bbt.config import PARAMS_FILE, SERVER_TIMEOUT_S, ConfigError, RegisterParams, ServeParams, load_params
from bbt.errors import ModelError
from bbt.model.openset import Timer
from bbt.model.photo_model import load_classifier
from bbt.model.predict import FacePrediction
from bbt.monitoring.answers import ServedModel, log_answer, log_feedback
from bbt.review.feedback import open_store
from bbt.serving.admission import MB, Admission, Busy, Ticket
from bbt.serving.allocator import return_big_frees_to_the_os
from bbt.serving.contract import (
    ERRORS,
    Classification,
    Face,
    ImageSize,
    LegacyFace,
    ModelInfo,
    PhotoUpload,
    decode_data_url,
    legacy_face,
)
from bbt.serving.feedback_route import FEEDBACK_ERRORS, OPENAPI_BODY, FeedbackKept, report_wrong_answer
from bbt.serving.model_card_route import card_and_page, card_response
from bbt.serving.supervisor import respawn_promptly
from bbt.serving.upload_limits import (
    TICKET,
    JsonErrors,
    UploadLimit,
    UploadTooLarge,
    busy_response,
    error_response,
    field_missing_message,
    keep_uploads_in_memory,
    timed_out_response,
)
from bbt.vision.images import SUPPORTED_FOR_PEOPLE, ImageError, decode_cost

log = logging.getLogger("bbt.serving.service")
# `bentoml serve` imports this module in its supervisor before it makes its arbiter (bbt/serving/supervisor.py).
respawn_promptly()

WEB_DIR = Path(__file__).with_name("web")
# A data URL carries base64 (4 bytes per 3) plus its header: the legacy route's body may be this much larger.
# Old pages post it URL-encoded, where '+' and '/' (1 in 32 base64 characters) take 3 bytes each: 1.0625x more,
# and a margin for photos whose base64 has more of them.
BASE64_GROWTH = 4 / 3 * 1.1
ENVELOPE_BYTES = 64 * 1024
# Requests classified at once per worker process: OpenCV and Pillow release the GIL, so two keep a core busy
# while one waits on Python; more only multiply the memory of large photos in flight.
THREADS_PER_WORKER = 2

# BentoML serves these at /metrics, summed over its worker processes.
STAGE_SECONDS = prometheus_client.Histogram(
    name="bbt_stage_seconds",
    documentation="Seconds spent per request in each inference stage (decode, detect, features, classify).",
    labelnames=["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FACES = prometheus_client.Counter(
    name="bbt_faces",
    documentation="Faces classified, by label ('unknown': not one of the four).",
    labelnames=["label"],
)


class TimedOut(Exception):
    """The photo's deadline (serve.timeout_s after its upload was read) passed; its work stops at the next stage."""


class Assets(StaticFiles):
    """The page's static files, without the page's template (served, filled in, at /)."""

    async def get_response(self, path: str, scope: dict) -> Any:
        if Path(path).name == "index.html":
            raise StarletteHTTPException(404, "not found: the page is at /")
        return await super().get_response(path, scope)


# No slash redirects: Starlette builds their Location from the Host header (an open redirect); a wrong path gets
# the JSON 404 that lists the routes instead.
web = FastAPI(title="bbt actor classifier", version="1", docs_url=None, redoc_url=None, openapi_url=None,
              redirect_slashes=False,
              description="Finds the faces in a photo and names the Big Bang Theory actor of each.")
web.add_middleware(UploadLimit, service=bentoml.get_current_service)


@web.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(*field_missing_message(request))


@web.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and _form_parser_failed(exc):
        how = ("the photo as a data URL in the form field 'image_data'" if request.url.path == "/classify_image"
               else "the photo as the file field 'image', e.g. curl -F image=@photo.jpg URL/classify")
        reason = "" if detail == "There was an error parsing the body" else f" ({detail.rstrip('.')})"
        detail = f"the request body is not a valid form{reason}: send {how}"
    elif exc.status_code == 405:
        detail = (f"{request.method} {request.url.path}: method not allowed; send the photo with POST, "
                  "e.g. curl -F image=@photo.jpg URL/classify")
    return error_response(exc.status_code, detail)


def _form_parser_failed(exc: BaseException) -> bool:
    """Whether Starlette's form parser raised this (FastAPI and Starlette wrap its errors in a plain 400)."""
    from starlette.formparsers import MultiPartException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MultiPartException) or getattr(seen, "detail", None) == \
                "There was an error parsing the body":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# ---- the service --------------------------------------------------------------------------------------------

def serve_params(folder: Path | None = None) -> ServeParams:
    """params.yaml's serve section, from the working directory (`folder`): the project's under `bbt serve` and
    `bentoml serve bbt.serving.service:ActorService`, the bento's src folder (where bentofile.yaml puts params.yaml) under
    `bentoml serve TAG`. A missing file is an error at start-up, not silently the defaults."""
    path = (folder or Path.cwd()) / PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the service reads its limits (params.yaml's serve section) from its "
                          "working directory; serve from the project folder (`bbt serve`), or serve a bento built "
                          "from bentofile.yaml, which carries params.yaml")
    return load_params(path).serve


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

    # The name `bbt register` registers and `bbt import-champion` stores under (register.model_name's default).
    bento_model = bentoml.models.BentoModel(f"{RegisterParams.model_name}:latest")

    def __init__(self) -> None:
        self.settings: ServeParams = serve_params()
        model_ref = type(self).bento_model
        if model_ref.stored is None:
            store = os.environ.get("BENTOML_HOME", "~/bentoml")
            raise ModelError(f"the BentoML store in {store} has no {model_ref.tag}: run `bbt import-champion` "
                             "(or `dvc repro`) first, or serve with `bbt serve`, which imports the champion")
        self.classifier = load_classifier(self.bento_model.path_of("mlflow_model"))
        self.classifier.warm_up()
        labels = self.bento_model.info.labels
        self.model_info = ModelInfo(name=model_ref.tag.name, version=labels.get("registry_version", "unknown"),
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
        self.monitoring_dir = self.settings.monitoring_dir.resolve()
        self.served_model = ServedModel(self.model_info.name, self.model_info.version, str(self.bento_model.tag))
        self.feedback = open_store(self.settings)  # None: this server keeps no feedback
        self.index_html = ((WEB_DIR / "index.html").read_text().replace("{{max_upload_bytes}}", str(self.max_bytes))
                           .replace("{{supported_formats}}", SUPPORTED_FOR_PEOPLE)
                           .replace("{{feedback}}", "off" if self.feedback is None else "on"))
        self.card, self.index_html = card_and_page(self.bento_model.path_of("mlflow_model"), self.index_html)
        self.upload_limits = {"/classify": self.max_bytes, "/classify_image": self.legacy_max_bytes,
                              "/feedback": self.max_bytes + ENVELOPE_BYTES}
        log.info("serving %s version %s (%s)", self.model_info.name, self.model_info.version, self.bento_model.tag)

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    def classify_bytes(self, data: bytes, name: str, deadline: float = math.inf,
                       ) -> tuple[list[FacePrediction], tuple[int, int]]:
        """Decode untrusted bytes and classify every face; ImageError for anything that is not a usable image,
        TimedOut when `deadline` (time.monotonic) passes before one of the stages starts."""
        faces, size = self.classifier.classify_bytes(data, name, self.max_pixels, stage_timer(deadline))
        for face in faces:
            FACES.labels(label=face.label).inc()
        return faces, size

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

    async def answer(self, data: bytes, name: str, ticket: Ticket,
                     ) -> tuple[list[FacePrediction], tuple[int, int]] | JSONResponse:
        """run_classifier, with each way a photo is refused as its JSON error (the same on both routes)."""
        try:
            return await self.run_classifier(data, name, ticket)
        except ImageError as err:
            return error_response(400, str(err))
        except Busy as err:
            return busy_response(err)
        except TimedOut:
            return timed_out_response(self.settings.timeout_s)

    def timed_classify(self, data: bytes, name: str, deadline: float,
                       ) -> tuple[list[FacePrediction], tuple[int, int]]:
        start = time.perf_counter()
        try:
            return self.classify_bytes(data, name, deadline)
        finally:  # the work alone (not the wait), for the Retry-After estimate
            self.admission.observe(time.perf_counter() - start)

    def record_answer(self, faces: list[FacePrediction], started: float) -> None:
        """Log what a classify route answered (bbt/monitoring/answers.py), since `started` (time.perf_counter)."""
        log_answer(self.monitoring_dir, self.served_model, faces, time.perf_counter() - started)

    @web.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.index_html)

    @web.get("/favicon.ico", include_in_schema=False)
    async def favicon(self) -> FileResponse:
        # Browsers ask for /favicon.ico on pages without a <link rel="icon">, e.g. /docs.json.
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    @web.get("/model-card", summary="The served model's card: markdown with Accept: text/markdown, else a page",
             responses={404: {"description": "The served model has no card"}})
    async def model_card(self, request: Request) -> Response:
        return card_response(self.card, request)

    @web.post("/classify", response_model=Classification, responses=ERRORS,
              summary="Find every face in a photo and name the actor")
    async def classify(self, image: PhotoUpload, request: Request) -> Classification | JSONResponse:
        started = time.perf_counter()
        name = f"the uploaded file {image.filename!r}" if image.filename else "the uploaded file"
        answer = await self.answer(await image.read(), name, request.scope[TICKET])
        if isinstance(answer, JSONResponse):
            return answer
        faces, (width, height) = answer
        self.record_answer(faces, started)
        return Classification(faces=[Face.model_validate(f.as_dict()) for f in faces], model=self.model_info,
                              image=ImageSize(width=width, height=height))

    @web.post("/classify_image", response_model=list[LegacyFace], responses=ERRORS,
              summary="The original system's route: a data URL in the form field image_data",
              description="Each face's 'class' is an actor, 'unknown' (not one of the four) or 'cant_tell' (too "
                          "small to judge), answers /classify gives as its 'label'; the original had neither.",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-www-form-urlencoded": {"schema": {
                      "type": "object", "required": ["image_data"],
                      "properties": {"image_data": {"type": "string", "description": "data:image/...;base64,..."}},
                  }}}}})
    async def classify_image(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        form = await request.form(max_files=1, max_fields=10,
                                  max_part_size=self.legacy_max_bytes)
        field = form.get("image_data")
        if not isinstance(field, str) or not field:
            return error_response(400, "the form has no field 'image_data': send the photo as a data URL "
                                       "(data:image/jpeg;base64,...) in the form field 'image_data'")
        try:
            data = decode_data_url(field)
        except ImageError as err:
            return error_response(400, str(err))
        if len(data) > self.max_bytes:
            return error_response(413, UploadTooLarge(self.max_bytes).detail)
        answer = await self.answer(data, "the image in 'image_data'", request.scope[TICKET])
        if isinstance(answer, JSONResponse):
            return answer
        faces, _ = answer
        self.record_answer(faces, started)
        legacy = [legacy_face(face, self.classifier.classes) for face in faces]
        # The original answered any origin; old pages served from elsewhere depend on it.
        return JSONResponse(legacy, headers={"Access-Control-Allow-Origin": "*"})

    @web.post("/feedback", response_model=FeedbackKept, status_code=201, responses=FEEDBACK_ERRORS,
              summary="Report the answer for one face as wrong; with consent=true, this server keeps the report",
              openapi_extra=OPENAPI_BODY)
    async def feedback_report(self, request: Request) -> JSONResponse:
        response = await report_wrong_answer(self, request)
        if response.status_code == 201:  # kept: counted in `bbt monitor`'s feedback rate
            log_feedback(self.monitoring_dir, self.served_model)
        return response


web.mount("/static", Assets(directory=WEB_DIR), name="static")
ActorService.add_asgi_middleware(JsonErrors)
