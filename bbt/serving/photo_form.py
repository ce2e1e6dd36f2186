"""`PhotoForm`: the checks `/classify`'s body passes before BentoML parses it.

BentoML's multipart parser downloads a file field given as a string (a URL), and so does its JSON parser; it has
no setting to stop that. So the whole body (already bounded by `UploadLimit`) is read here and refused unless it
is a multipart form whose field 'image' is a file part: then nothing reaches BentoML that makes it fetch a URL.
The form's file name is left in the scope for the answer's error messages.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from bbt.serving.upload_limits import error_response

# The ASGI scope key the classify API reads the uploaded file's name from.
PHOTO_NAME = "bbt.photo_name"
PHOTO_FIELD = "image"
CURL_HINT = "e.g. curl -F image=@photo.jpg URL/classify"
# The longest file name (its last part, in bytes) taken: a file system's 255 bytes, less room for a prefix (error
# messages and logs quote the name).
MAX_NAME_BYTES = 240


class PhotoForm:
    """ASGI middleware: a POST to one of `paths` is answered with the same JSON errors as the rest of the service
    (415 not multipart, 400 not a valid form or no file in 'image') unless its 'image' is a file part; a body that
    passes is handed on, byte for byte, to the app."""

    def __init__(self, app: Any, paths: tuple[str, ...] = ("/classify",)) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        if not content_type.startswith("multipart/form-data"):
            return await error_response(415, (
                f"POST {scope['path']} needs multipart/form-data with the photo in the field 'image' "
                f"(got {content_type or 'no content type'}), {CURL_HINT}"))(scope, receive, send)
        try:
            chunks = await _whole_body(receive)
        except HTTPException as err:  # UploadLimit's 413 or 408 while the body streams in
            return await error_response(err.status_code, str(err.detail))(scope, receive, send)
        refusal, name = await _check_form(scope, chunks)
        if refusal:
            return await error_response(400, refusal)(scope, receive, send)
        scope[PHOTO_NAME] = name
        await self.app(scope, _replay(chunks, receive), send)


async def _whole_body(receive: Any) -> list[bytes]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return chunks
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return chunks


def _replay(chunks: list[bytes], receive: Any) -> Any:
    """A `receive` that gives the body read already as one message, then the client's later messages."""
    pending = [b"".join(chunks)]

    async def replayed() -> dict:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


async def _check_form(scope: dict, chunks: list[bytes]) -> tuple[str, str]:
    """Why the form is refused ('' when it is not), and the name of its photo's file."""
    request = Request(scope, _replay(chunks, _disconnected))
    try:
        form = await request.form()
    except (MultiPartException, HTTPException, AssertionError) as err:
        detail = str(getattr(err, "detail", None) or getattr(err, "message", None) or err).rstrip(".")
        reason = f" ({detail})" if detail and detail != "There was an error parsing the body" else ""
        return (f"the request body is not a valid form{reason}: send the photo as the file field 'image', "
                f"{CURL_HINT}"), ""
    try:
        photos = form.getlist(PHOTO_FIELD)  # BentoML fetches every string among them
        if not photos or not all(isinstance(photo, UploadFile) for photo in photos):
            return ("the form has no file in the field 'image': send the photo as a file part named 'image', "
                    f"{CURL_HINT}"), ""
        for photo in photos:
            if not _storable(photo.filename or ""):
                return (f"the photo's file name {photo.filename!r} is one this service cannot store (a NUL "
                        f"character, or over {MAX_NAME_BYTES} bytes): rename the photo, e.g. photo.jpg"), ""
        return "", getattr(photos[0], "filename", None) or ""
    finally:
        await form.close()


def _storable(filename: str) -> bool:
    """Whether the name's last part could name a file (no NUL, within MAX_NAME_BYTES)."""
    name = os.path.basename(filename)
    return "\x00" not in name and len(os.fsencode(name)) <= MAX_NAME_BYTES


async def _disconnected() -> dict:
    return {"type": "http.disconnect"}


class UploadedPhoto(PurePosixPath):
    """The classify API's photo: a file field to BentoML (its clients send it as a multipart file part, its schema
    says `type: file`), kept in memory as it arrived instead of copied to a temporary file and read back, which
    BentoML does for a `Path` (a disk write and read per photo, on the event loop). Its path is the upload's file
    name; `data` holds its bytes."""

    data: bytes

    @classmethod
    def from_upload(cls, upload: Any) -> UploadedPhoto:
        """What BentoML's multipart parser hands over (PhotoForm let only file parts through)."""
        if not isinstance(upload, UploadFile):
            raise ValueError(f"the field 'image' must be a file part, {CURL_HINT}")  # noqa: TRY004 - pydantic's kind
        upload.file.seek(0)
        photo = cls(os.path.basename(upload.filename or "") or "photo")
        photo.data = upload.file.read()
        return photo

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls.from_upload, serialization=core_schema.plain_serializer_function_ser_schema(lambda p: p.data))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        # What BentoML writes for a file input, so its clients send the photo as a file part.
        return {"type": "file", "format": "binary"} if handler.mode == "validation" else {"type": "string",
                                                                                           "format": "binary"}
