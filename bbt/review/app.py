"""`bbt review`: the review queue as a local web page (loopback only), one face at a time, a verdict per key.

Routes: `/` the page; `GET /api/queue` progress and every item's state; `GET /api/items/{n}` one item with the
champion's answer; `/api/items/{n}/crop.jpg` and `/photo.jpg`; `POST /api/verdict`; `GET /api/groups` the
unreviewed detections in groups (bbt/review/groups.py); `POST /api/group-verdict` one verdict for a group's
selected faces; `POST /api/undo` (the last verdict, a whole group's included).
Every refused request is a JSON `{"error": ...}` with a 4xx status and changes nothing. Only the page this app
serves can write (bbt/review/guard.py: its own Host, Origin and per-run token).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bbt import UNKNOWN
from bbt.errors import BbtError
from bbt.review.guard import OwnPageOnly, new_token
from bbt.review.queue import OTHER_VERDICTS, SOURCES, Item, person_keys
from bbt.review.verdicts import Reviewer, ReviewError
from bbt.vision.faces import Box
from bbt.vision.images import ImageError, Photo, decode_photo

if TYPE_CHECKING:
    from bbt.review.groups import QueueGroup

log = logging.getLogger("bbt.review")

# Its own folder: the public service serves bbt/serving/web as /static, and the review page has no place there.
WEB_DIR = Path(__file__).with_name("web")
FAVICON = Path(__file__).parents[1] / "serving" / "web" / "favicon.svg"
PHOTO_SIDE = 1280  # the whole photo is shown at most this large (the box is drawn over it by the page)
CROP_SIDE = 256
CROP_MARGIN = 0.25  # of the box's size on each side: enough context to tell who it is


class BoxIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=2000)
    verdict: str = Field(max_length=40)
    note: str = Field(default="", max_length=2000)
    image: str | None = Field(default=None, max_length=2000)
    box: BoxIn | None = None


class GroupVerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str = Field(max_length=40)
    keys: list[str] = Field(max_length=5000)
    verdict: str = Field(max_length=40)
    note: str = Field(default="", max_length=2000)


class Answers:
    """The champion's answer for a queued face, computed when first shown and kept (None: no champion)."""

    def __init__(self, model_uri: str | None) -> None:
        self.classifier: Any = None
        self.problem = ""
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()
        if model_uri is None:
            self.problem = "no model given"
            return
        try:
            from bbt.model.photo_model import load_classifier

            self.classifier = load_classifier(model_uri)
        except Exception as err:  # noqa: BLE001 - any failure to load leaves the review usable without answers
            self.problem = f"the champion {model_uri} could not be loaded ({type(err).__name__}: {err})"
            log.warning("%s: the page shows no model answers", self.problem)

    def of(self, item: Item, photo: Photo) -> dict[str, Any] | None:
        with self._lock:
            if item.key not in self._cache:
                self._cache[item.key] = self._answer(item, photo)
            return self._cache[item.key]

    def _answer(self, item: Item, photo: Photo) -> dict[str, Any] | None:
        if self.classifier is None:
            return None
        (face,) = self.classifier.answer_boxes(photo, [item.box])
        return {"label": face.label, "closest_actor": face.closest_actor, "confidence": face.confidence,
                "reason": face.reason}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(reviewer: Reviewer, answers: Answers, port: int, group_problem: str = "") -> FastAPI:
    """The review app over one session's queue, served at 127.0.0.1:`port`; writes need a token made for this
    app, which the page it serves carries. `group_problem`: why the queue has no groups, if it has none."""
    app = FastAPI(title="bbt review", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    token = new_token()
    app.add_middleware(OwnPageOnly, port=port, token=token)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(400, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    def item_at(n: int) -> Item:
        if not 0 <= n < len(reviewer.queue):
            raise ReviewError(f"no item {n}: the queue has items 0 to {len(reviewer.queue) - 1}")
        return reviewer.queue[n]

    last: dict[str, Photo] = {}  # the item shown: the page asks for its details, crop and photo at once
    last_lock = threading.Lock()

    def photo_of(item: Item) -> Photo:
        with last_lock:
            if item.key not in last:
                path = Path(item.image) if item.source == "feedback" else reviewer.inside_raw(item.image)
                photo = decode_photo(path.read_bytes(), item.image)
                last.clear()
                last[item.key] = photo
            return last[item.key]

    def state() -> dict[str, Any]:
        done, total = len(reviewer.done), len(reviewer.queue)
        given = reviewer.verdicts()
        people = reviewer.people()
        keys = person_keys(people)
        new = reviewer.new_names()
        return {"done": done, "total": total, "can_undo": bool(reviewer.given),
                "people": [{"name": name, "key": keys.get(name, ""), "in_cast": name in reviewer.cast}
                           for name in people],
                "enrol": enrol_message(new, reviewer.corrections_path) if new else "",
                "last": reviewer.given[-1].item.key if reviewer.given else None,
                "items": [{"n": n, "key": item.key, "source": item.source, "verdict": given.get(item.key)}
                          for n, item in enumerate(reviewer.queue)]}

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        # The token is this run's: a page kept from an earlier run must not be reused.
        return HTMLResponse((WEB_DIR / "review.html").read_text(encoding="utf-8").replace("{{token}}", token),
                            headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        files = {"review.js": "text/javascript", "review.css": "text/css"}
        if name == "favicon.svg":
            return Response(FAVICON.read_bytes(), media_type="image/svg+xml")
        if name not in files:
            return error(404, f"no static file {name!r}")
        return Response((WEB_DIR / name).read_bytes(), media_type=files[name])

    @app.get("/api/queue")
    def queue() -> dict[str, Any]:
        return state()

    def found(n: int) -> tuple[Item, Photo] | JSONResponse:
        """Queue item `n` and its decoded photo, or the JSON error: 404 for no such item, 422 for a photo that
        cannot be read (moved, or not an image any more)."""
        try:
            queued = item_at(n)
            return queued, photo_of(queued)
        except (BbtError, ImageError, OSError) as err:
            return error(404 if isinstance(err, ReviewError) else 422, str(err))

    @app.get("/api/items/{n}")
    def item(n: int) -> JSONResponse:
        if isinstance(got := found(n), JSONResponse):
            return got
        queued, photo = got
        answer = answers.of(queued, photo)
        given = reviewer.verdicts()
        return JSONResponse({
            "n": n, "key": queued.key, "source": queued.source, "image": queued.image, "box": queued.box.as_dict(),
            "why": queued.why, "current": queued.current, "suggestion": queued.suggestion,
            "width": photo.size[0], "height": photo.size[1], "verdict": given.get(queued.key),
            "answer": answer, "answer_problem": answers.problem if answer is None else "",
            "unknown": UNKNOWN, "verdicts": [*reviewer.people(), *OTHER_VERDICTS]})

    @app.get("/api/items/{n}/crop.jpg")
    def crop(n: int) -> Response:
        if isinstance(got := found(n), JSONResponse):
            return got
        queued, photo = got
        return jpeg(face_with_margin(photo, queued.box))

    @app.get("/api/items/{n}/photo.jpg")
    def whole_photo(n: int) -> Response:
        if isinstance(got := found(n), JSONResponse):
            return got
        return jpeg(fit(got[1].image, PHOTO_SIDE))

    @app.post("/api/verdict")
    def verdict(body: VerdictIn) -> JSONResponse:
        box = Box(body.box.x, body.box.y, body.box.w, body.box.h) if body.box else None
        try:
            given = reviewer.give(body.key, body.verdict, body.note, body.image, box)
        except BbtError as err:
            return error(400, str(err))
        log.info("verdict %s: %s", given.item.key, given.verdict)
        return JSONResponse(state())

    @app.get("/api/groups")
    def groups() -> JSONResponse:
        position = {item.key: n for n, item in enumerate(reviewer.queue)}
        given = reviewer.verdicts()
        return JSONResponse({"problem": group_problem, "groups": [
            {**g.as_dict(), "items": [position[k] for k in g.keys], "pending": [k for k in g.keys if k not in given]}
            for g in reviewer.groups.values()]})

    @app.post("/api/group-verdict")
    def group_verdict(body: GroupVerdictIn) -> JSONResponse:
        try:
            given = reviewer.give_group(body.group, body.keys, body.verdict, body.note)
        except BbtError as err:
            return error(400, str(err))
        log.info("group verdict %s (%d faces): %s", given.group, len(given.items), given.verdict)
        return JSONResponse(state())

    @app.post("/api/undo")
    def undo() -> JSONResponse:
        try:
            taken = reviewer.undo()
        except ReviewError as err:
            return error(409, str(err))
        log.info("undone %s: %s (%d faces)", taken.group or taken.item.key, taken.verdict, len(taken.items))
        return JSONResponse({**state(), "undone": taken.item.key, "undone_group": taken.group,
                             "undone_faces": len(taken.items)})

    return app


def enrol_message(names: list[str], corrections: Path) -> str:
    """What the reviewer does next for names not in the cast: the app never edits params.yaml itself."""
    listed = ", ".join(names)
    return (f"{listed} {'is' if len(names) == 1 else 'are'} not in the cast: {corrections} now accepts faces of "
            f"{'them' if len(names) > 1 else 'the name'}. To enrol, add {listed} to `cast:` in params.yaml, then "
            "`dvc repro` (until then these faces train as strangers)")


def revisit_group(reviewer: Reviewer) -> QueueGroup | None:
    """The faces `--find` brought back, as one group (first in the groups view): one verdict names them all."""
    from bbt.review.clusters import Proposal
    from bbt.review.groups import QueueGroup

    keys = tuple(item.key for item in reviewer.queue if item.source == "revisit")
    if not keys:
        return None
    said = Counter(item.current for item in reviewer.queue if item.source == "revisit").most_common(1)[0][0]
    verdict = said.split(" ")[0] if said.endswith("(accepted)") else "stranger" if said == "stranger" else "unusable"
    return QueueGroup("found", "found", keys, Proposal(verdict, f"as reviewed: {said}", 0.0, 0.0), 1.0, ())


def face_with_margin(photo: Photo, box: Box) -> np.ndarray:
    """The face and some of its surroundings, CROP_SIDE pixels on its longer side."""
    sx, sy = photo.scale
    height, width = photo.image.shape[:2]
    mx, my = box.w * CROP_MARGIN, box.h * CROP_MARGIN
    left, top = max(0, int((box.x - mx) * sx)), max(0, int((box.y - my) * sy))
    right = min(width, max(left + 1, round((box.x + box.w + mx) * sx)))
    bottom = min(height, max(top + 1, round((box.y + box.h + my) * sy)))
    return fit(photo.image[top:bottom, left:right], CROP_SIDE, enlarge=True)


def fit(image: np.ndarray, side: int, enlarge: bool = False) -> np.ndarray:
    scale = side / max(image.shape[:2])
    if scale >= 1 and not enlarge:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def jpeg(image: np.ndarray) -> Response:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        return error(500, "could not encode the image")
    return Response(data.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "no-store"})


def serve_review(root: Path, port: int, model: str | None, find: str = "") -> None:
    """Build the queue from the project in `root` and serve the review page on 127.0.0.1:`port` until Ctrl-C."""
    import uvicorn

    from bbt.config import load_params
    from bbt.registry.tracking import tracking_uri
    from bbt.review.feedback import feedback_folder

    with socket.socket() as probe:  # said in one line before the queue is built, not as uvicorn's log
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise BbtError(f"port {port} on 127.0.0.1 is not free ({err.strerror}): pass another with --port") from None
    params = load_params(root / "params.yaml")
    store = feedback_folder(params.serve, cwd=root)
    if model is None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_registry_uri(tracking_uri())
        model = f"models:/{params.register.model_name}@{params.register.alias}"
    answers = Answers(None if model == "none" else model)
    min_face_width = answers.classifier.model.min_face_width if answers.classifier is not None else 0
    doubts, doubt_problem = cannot_tell(root, params, answers)
    reviewer = Reviewer(root, params.data, store, min_face_width, params.cast, find, doubts)
    group_problem = add_groups(reviewer, root, params, answers)
    found = revisit_group(reviewer)
    if found is not None:  # the faces --find brought back are a group even when the rest cannot be grouped
        reviewer.groups = {found.id: found, **reviewer.groups}
    counts = ", ".join(f"{source} {sum(i.source == source for i in reviewer.queue)}" for source in SOURCES)
    print(f"bbt review: {len(reviewer.queue)} faces wait for a verdict ({counts}); verdicts go to "
          f"{reviewer.corrections_path}\nopen http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    if doubt_problem:
        print(f"bbt review: the faces in the champion's band of doubt or too blurred are not put first "
              f"({doubt_problem}); those too small are", flush=True)
    if group_problem:
        print(f"bbt review: no groups ({group_problem}); the faces wait one at a time", flush=True)
    else:
        print(f"bbt review: the {sum(len(g.keys) for g in reviewer.groups.values())} detections nobody reviewed "
              f"are in {len(reviewer.groups)} groups (G on the page)", flush=True)
    uvicorn.run(create_app(reviewer, answers, port, group_problem), host="127.0.0.1", port=port,
                log_level="warning")


def cannot_tell(root: Path, params: Any, answers: Answers) -> tuple[dict[tuple[str, Box], str], str]:
    """The unreviewed detections the champion answers "can't tell" (bbt/review/doubts.py), and why not, if they
    cannot be found."""
    from bbt.review.doubts import champion_doubts

    try:
        return champion_doubts(root, params, answers.classifier), ""
    except (BbtError, ValueError) as err:
        return {}, str(err)


def add_groups(reviewer: Reviewer, root: Path, params: Any, answers: Answers) -> str:
    """Group the queue's detections nobody reviewed (bbt/review/groups.py) with the champion's open-set
    threshold (or, without a champion, the search's model's); returns why not, if they cannot be grouped."""
    from bbt.review.groups import NEAREST_FACE, group_queue, search_threshold

    try:
        model = answers.classifier.model if answers.classifier is not None else None
        threshold = model.threshold if model is not None and model.rule == NEAREST_FACE else search_threshold(root)
        reviewer.groups = {g.id: g for g in group_queue(root, params, reviewer.queue, threshold)}
    except BbtError as err:
        return str(err)
    return ""
