"""The champion over HTTP: a BentoML service with the drop-box page, `/classify` and the legacy `/classify_image`.

Run it with `bbt serve` (imports the champion into the BentoML store, then `bentoml serve bbt.serving.service:ActorService`).
`/classify` is a BentoML API (its clients, /schema.json and the docs page at /docs know it); its body is checked by
bbt.serving.photo_form before BentoML parses it, so each bad input gets a clear 4xx `{"error": ...}` and nothing
makes the server fetch a URL (BentoML's parsers download file fields given as URL strings). The page, the legacy
route and /feedback live in a FastAPI app mounted on the service.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import _bentoml_impl.server
import bentoml
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bbt.config import (
    PARAMS_FILE,
    SERVER_TIMEOUT_S,
    ConfigError,
    RegisterParams,
    ServeParams,
    load_serve_params,
)
from bbt.errors import ModelError
from bbt.model.face_prediction import FacePrediction
from bbt.monitoring.answers import ServedModel, log_answer, log_feedback
from bbt.review.feedback import open_store
from bbt.serving.admission import MB, Admission, Busy
from bbt.serving.allocator import return_big_frees_to_the_os
from bbt.serving.contract import (
    ERRORS,
    Classification,
    Face,
    ImageSize,
    LegacyFace,
    ModelInfo,
    decode_data_url,
    legacy_face,
)
from bbt.serving.feedback_route import FEEDBACK_ERRORS, OPENAPI_BODY, FeedbackKept, report_wrong_answer
from bbt.serving.model_card_route import card_and_page, card_response
from bbt.serving.photo_form import PHOTO_NAME, PhotoForm, UploadedPhoto
from bbt.serving.sandbox import Sandboxes, TimedOut
from bbt.serving.supervisor import supervise
from bbt.serving.upload_limits import (
    UPLOAD_COPIES,
    JsonErrors,
    UploadLimit,
    UploadTooLarge,
    busy_response,
    error_response,
    field_missing_message,
    keep_uploads_in_memory,
    timed_out_response,
)
from bbt.vision.images import SUPPORTED_FOR_PEOPLE, ImageError

log = logging.getLogger("bbt.serving.service")
PHOTO_WORK = "bbt.serving.sandbox_process:actor_classifier"

WEB_DIR = Path(__file__).with_name("web")
# BentoML's docs page (Swagger UI over /docs.json), which it serves at / on a service without a page of its own.
BENTOML_DOCS_PAGE = Path(_bentoml_impl.server.__file__).with_name("main-openapi.html")
# A data URL carries base64 (4 bytes per 3) plus its header: the legacy route's body may be this much larger.
# Old pages post it URL-encoded, where '+' and '/' (1 in 32 base64 characters) take 3 bytes each: 1.0625x more,
# and a margin for photos whose base64 has more of them.
BASE64_GROWTH = 4 / 3 * 1.1
ENVELOPE_BYTES = 64 * 1024
# Photos classified at once per worker process, each in a photo process of its own (bbt.serving.sandbox): two keep
# a core busy while the other waits on the worker; more only multiply the memory of large photos in flight.
PROCESSES_PER_WORKER = 2
# The photo processes' CPU-time limit past the photo's deadline: a backstop for the worker's kill at the deadline.
CPU_LIMIT_MARGIN_S = 1

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
    return load_serve_params(path)


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
        self.max_bytes = int(self.settings.max_upload_mb * MB)
        self.max_pixels = int(self.settings.max_megapixels * 1_000_000)
        self.legacy_max_bytes = int(self.max_bytes * BASE64_GROWTH) + ENVELOPE_BYTES
        # The model is loaded once, in the photo processes' warm parent: this process never parses a photo.
        self.sandboxes = Sandboxes(PHOTO_WORK, self.bento_model.path_of("mlflow_model"), PROCESSES_PER_WORKER,
                                   self.max_pixels,
                                   self.settings.timeout_s + CPU_LIMIT_MARGIN_S)
        self.classes: list[str] = self.sandboxes.info["classes"]
        labels = self.bento_model.info.labels
        self.model_info = ModelInfo(name=model_ref.tag.name, version=labels.get("registry_version", "unknown"),
                                    open_set_rule=self.sandboxes.info["open_set_rule"])
        self.admission = Admission(self.settings.max_pending, int(self.settings.worker_memory_mb * MB),
                                   PROCESSES_PER_WORKER)
        return_big_frees_to_the_os()  # 10 MB bodies
        keep_uploads_in_memory(self.max_bytes)
        self.monitoring_dir = self.settings.monitoring_dir.resolve()
        self.served_model = ServedModel(self.model_info.name, self.model_info.version, str(self.bento_model.tag))
        self.feedback = open_store(self.settings)  # None: this server keeps no feedback
        self.index_html = ((WEB_DIR / "index.html").read_text().replace("{{max_upload_bytes}}", str(self.max_bytes))
                           .replace("{{supported_formats}}", SUPPORTED_FOR_PEOPLE)
                           .replace("{{feedback}}", "off" if self.feedback is None else "on")
                           .replace("{{cast}}", html.escape(json.dumps(self.classes))))
        self.card, self.index_html = card_and_page(self.bento_model.path_of("mlflow_model"), self.index_html)
        self.upload_limits = {"/classify": self.max_bytes, "/classify_image": self.legacy_max_bytes,
                              "/feedback": self.max_bytes + ENVELOPE_BYTES}
        log.info("serving %s version %s (%s)", self.model_info.name, self.model_info.version, self.bento_model.tag)

    def __is_ready__(self) -> bool:
        return self.sandboxes.alive

    async def answer(self, data: bytes, name: str) -> tuple[list[FacePrediction], tuple[int, int]] | JSONResponse:
        """The faces and upright size of an uploaded photo, or the JSON error refusing it (the same on every route).

        The photo enters the worker's budget now that its body has arrived (waiting for a slow upload takes no
        place): by count and by its upload's memory, then, once its photo process has read its header, by what
        decoding it may take (a 503 when that does not fit). It is decoded and classified in a photo process
        within serve.timeout_s, or answered 504 with the process killed.
        """
        try:
            admitted = self.admission.admit(UPLOAD_COPIES * len(data))
        except Busy as err:
            return busy_response(err)
        try:
            classified = await self.sandboxes.classify(data, name, time.monotonic() + self.settings.timeout_s,
                                                       lambda cost: self.admission.grow(admitted, cost))
        except ImageError as err:
            return error_response(400, str(err))
        except Busy as err:
            return busy_response(err)
        except TimedOut:
            return timed_out_response(self.settings.timeout_s)
        finally:
            self.admission.release(admitted)
        self.admission.observe(sum(classified.stages.values()))
        for stage, seconds in classified.stages.items():
            STAGE_SECONDS.labels(stage=stage).observe(seconds)
        for face in classified.faces:
            FACES.labels(label=face.label).inc()
        return classified.faces, classified.size

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

    @web.get("/docs", include_in_schema=False)
    async def docs(self) -> FileResponse:
        # BentoML serves its docs page at /, where this service's page is: the same file, here.
        return FileResponse(BENTOML_DOCS_PAGE, media_type="text/html")

    @web.get("/model-card", summary="The served model's card: markdown with Accept: text/markdown, else a page",
             responses={404: {"description": "The served model has no card"}})
    async def model_card(self, request: Request) -> Response:
        return card_response(self.card, request)

    @bentoml.api(route="/classify")
    async def classify(self, image: UploadedPhoto, ctx: bentoml.Context) -> Classification:
        """Find every face in a photo and name the actor.

        `image`: a JPEG, PNG, WebP, BMP, TIFF or GIF photo, as a multipart file part (bbt.serving.photo_form
        refuses anything else before BentoML parses it). A photo that cannot be answered gets the service's JSON
        error (see docs/serving.md) instead of the Classification.
        """
        started = time.perf_counter()
        filename = ctx.request.scope.get(PHOTO_NAME, "")
        name = f"the uploaded file {filename!r}" if filename else "the uploaded file"
        answer = await self.answer(image.data, name)
        if isinstance(answer, JSONResponse):
            ctx.response.status_code = answer.status_code  # BentoML sets the context's status on what it sends
            return answer  # type: ignore[return-value]  # BentoML sends a Response as it is
        faces, (width, height) = answer
        self.record_answer(faces, started)
        return Classification(faces=[Face.model_validate(f.as_dict()) for f in faces], model=self.model_info,
                              image=ImageSize(width=width, height=height))

    @web.post("/classify_image", response_model=list[LegacyFace], responses=ERRORS,
              summary="The original system's route: a data URL in the form field image_data",
              description="Each face's 'class' is an actor, 'unknown' (not one of the four) or 'cant_tell' (the "
                          "model cannot judge it: too small, or a distance in the band where the four and "
                          "strangers overlap; /classify's 'reason' says which), answers /classify gives as its "
                          "'label'; the original had neither.",
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
        answer = await self.answer(data, "the image in 'image_data'")
        if isinstance(answer, JSONResponse):
            return answer
        faces, _ = answer
        self.record_answer(faces, started)
        legacy = [legacy_face(face, self.classes) for face in faces]
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
# Outermost first: the upload limits hold every upload route's body, then /classify's form is checked.
ActorService.add_asgi_middleware(UploadLimit, service=bentoml.get_current_service)
ActorService.add_asgi_middleware(PhotoForm)
ActorService.add_asgi_middleware(JsonErrors)


def shared_photo_work() -> tuple[str, str] | None:
    """What the service's warm parent loads (in the supervisor: bbt/serving/supervisor.py); None without a model."""
    stored = ActorService.inner.bento_model.stored
    return (PHOTO_WORK, stored.path_of("mlflow_model")) if stored is not None else None


# `bentoml serve` imports this module in its supervisor before it makes its arbiter (bbt/serving/supervisor.py).
supervise(shared_photo_work)
