"""The feedback store: photos whose answer a user reported wrong on the served page, and agreed to let us keep.

One folder per report, `<store>/<id>/`, holding the uploaded bytes unchanged (`photo<suffix>`) and
`feedback.json` (the box, the model's answer, the user's answer, the model version, when). `bbt review` reads
them back with `FeedbackStore.items()`. The store is bounded (FeedbackFull past `max_mb`) and written so that a
crash never leaves an item `items()` returns half-written: the photo first, then the json, each renamed into
place from a temporary name.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from bbt import UNKNOWN
from bbt.config import ServeParams, check_person_name
from bbt.errors import BbtError
from bbt.vision.faces import Box
from bbt.vision.images import SUPPORTED_FOR_PEOPLE, ImageError

log = logging.getLogger("bbt.review.feedback")
MB = 1024 * 1024
ITEM_FILE = "feedback.json"
LOCK_FILE = ".lock"
# What a user may answer: one of the four, or "not one of the four".
def is_user_label(label: object) -> bool:
    """An answer a user may report: a person's name (the served model's classes: the route checks which), or
    UNKNOWN for "not one of the cast"."""
    return label == UNKNOWN or check_person_name(label) is None
# A deployment's say over params.yaml's serve.feedback_dir: the bento carries the project's params.yaml, which
# keeps feedback for `make run`, so a public deployment states its own choice (empty = off) in its environment.
FEEDBACK_DIR_ENV = "BBT_FEEDBACK_DIR"
# The file name a photo is kept under, by the format Pillow reads in its bytes (bbt.vision.images.SUPPORTED_FORMATS).
SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
            "TIFF": ".tif"}


class FeedbackError(BbtError):
    """A report the store cannot keep; the message says why."""


class FeedbackFull(FeedbackError):
    """Keeping the report would take the store over its size bound."""


@dataclass(frozen=True)
class Feedback:
    """One stored report: the photo as uploaded, the face's box, both answers and the model that gave its own."""

    id: str  # "<UTC time %Y%m%dT%H%M%SZ>-<first 12 hex of the photo's sha256>-<box x>-<box y>"
    folder: Path  # <store>/<id>/
    photo: Path  # <store>/<id>/photo<suffix>, the uploaded bytes unchanged
    box: Box  # in the photo's own pixels, exactly as /classify answered it
    model_label: str  # an actor or "unknown"
    model_confidence: float
    user_label: str  # an actor or "unknown" ("not one of the four")
    model_version: str  # the served model's registry version
    created: str  # ISO 8601 UTC

    def as_json(self) -> dict[str, Any]:
        """feedback.json's content: every field but the paths, plus the photo's file name."""
        return {"id": self.id, "photo": self.photo.name, "box": self.box.as_dict(), "model_label": self.model_label,
                "model_confidence": self.model_confidence, "user_label": self.user_label,
                "model_version": self.model_version, "created": self.created}


def utc_now() -> datetime:
    return datetime.now(UTC)


def feedback_id(created: datetime, photo: bytes, box: Box) -> str:
    digest = hashlib.sha256(photo).hexdigest()[:12]
    return f"{created.strftime('%Y%m%dT%H%M%SZ')}-{digest}-{box.x}-{box.y}"


def photo_suffix(photo: bytes) -> str:
    """The file suffix of the photo's real format, read from its header (not from a name the client sent)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(photo)) as image:
                image_format = image.format
    except Exception:  # noqa: BLE001 - Pillow raises many types for headers it cannot read
        image_format = None
    if image_format not in SUFFIXES:
        raise ImageError(f"the photo is not a {SUPPORTED_FOR_PEOPLE} image, so it cannot be kept")
    return SUFFIXES[image_format]


def check_user_label(label: str) -> str:
    """The user's answer, or FeedbackError saying what it may be."""
    if not is_user_label(label):
        raise FeedbackError(f"the answer {label!r} is neither a person's name nor '{UNKNOWN}' (not one of the cast)")
    return label


class FeedbackStore:
    """A folder of reports, bounded to `max_mb` (MiB) in all. Safe to share between processes: adding an item
    holds a lock on the folder while it checks the size and writes."""

    def __init__(self, folder: Path, max_mb: float, clock: Callable[[], datetime] = utc_now) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_mb * MB)
        self.clock = clock

    def add(self, photo: bytes, suffix: str, box: Box, model_label: str, model_confidence: float,
            user_label: str, model_version: str) -> Feedback:
        """Keep one report; FeedbackFull when it would take the store over its bound, FeedbackError when the
        same report (same photo, box and second) is already kept."""
        check_user_label(user_label)
        if suffix not in set(SUFFIXES.values()):
            raise FeedbackError(f"the photo suffix {suffix!r} is not one of {sorted(set(SUFFIXES.values()))}")
        created = self.clock().astimezone(UTC).replace(microsecond=0)
        item_id = feedback_id(created, photo, box)
        folder = self.folder / item_id
        item = Feedback(id=item_id, folder=folder, photo=folder / f"photo{suffix}", box=box,
                        model_label=model_label, model_confidence=float(model_confidence), user_label=user_label,
                        model_version=model_version, created=created.isoformat().replace("+00:00", "Z"))
        record = (json.dumps(item.as_json(), indent=2) + "\n").encode()
        with self._locked():
            used = self.size_bytes()
            if used + len(photo) + len(record) > self.max_bytes:
                raise FeedbackFull(f"the feedback store {self.folder} is full ({used / MB:.1f} of "
                                   f"{self.max_bytes / MB:g} MB): nothing was kept; its owner can review and "
                                   "remove reports (bbt review) or raise serve.feedback_max_mb")
            if (folder / ITEM_FILE).exists():
                raise FeedbackError(f"this report ({item_id}) is already kept")
            folder.mkdir(exist_ok=True)
            _write_atomically(item.photo, photo)
            _write_atomically(folder / ITEM_FILE, record)  # last: the item exists once this is in place
        return item

    def items(self) -> list[Feedback]:
        """Every complete report, sorted by id; a folder without a valid feedback.json (or its photo) is skipped."""
        if not self.folder.is_dir():
            return []
        found = (read_item(folder) for folder in sorted(self.folder.iterdir()) if folder.is_dir())
        return [item for item in found if item is not None]

    def size_bytes(self) -> int:
        """Bytes in the store's files, every folder and leftover included."""
        if not self.folder.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.folder.rglob("*") if path.is_file())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def read_item(folder: Path) -> Feedback | None:
    """The report in `folder`, or None when its feedback.json is missing, unreadable, incomplete, names another
    id, or its photo is not there."""
    try:
        raw = json.loads((folder / ITEM_FILE).read_text())
        photo = folder / raw["photo"]
        item = Feedback(id=str(raw["id"]), folder=folder, photo=photo, box=Box(**_box(raw["box"])),
                        model_label=str(raw["model_label"]), model_confidence=float(raw["model_confidence"]),
                        user_label=str(raw["user_label"]), model_version=str(raw["model_version"]),
                        created=str(raw["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if item.id != folder.name or photo.parent != folder or not photo.name.startswith("photo.") \
            or not photo.is_file() or not is_user_label(item.user_label):
        return None
    return item


def _box(raw: Mapping[str, Any]) -> dict[str, int]:
    if set(raw) != {"x", "y", "w", "h"} or not all(isinstance(v, int) for v in raw.values()):
        raise ValueError("not a box")
    return dict(raw)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, flush it to disk, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


def feedback_folder(serve: ServeParams, environ: Mapping[str, str] = os.environ,
                    cwd: Path | None = None) -> Path | None:
    """Where this server keeps feedback, or None when it keeps none: the environment's BBT_FEEDBACK_DIR when it
    is set (a deployment's explicit choice, empty = off), else params.yaml's serve.feedback_dir. A relative
    folder is relative to the working directory (the project's, under `bbt serve`)."""
    folder = environ.get(FEEDBACK_DIR_ENV, serve.feedback_dir).strip()
    if not folder:
        return None
    path = Path(folder).expanduser()
    return path if path.is_absolute() else (cwd or Path.cwd()) / path


def open_store(serve: ServeParams, environ: Mapping[str, str] = os.environ,
               cwd: Path | None = None) -> FeedbackStore | None:
    """The server's feedback store, or None when feedback is off."""
    folder = feedback_folder(serve, environ, cwd)
    if folder is None:
        log.info("feedback is off: no photo is kept")
        return None
    log.info("feedback on: reports users agree to are kept in %s (up to %g MB)", folder, serve.feedback_max_mb)
    return FeedbackStore(folder, serve.feedback_max_mb)
