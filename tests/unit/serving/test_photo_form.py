"""/classify's form check without a server: only a multipart form whose every 'image' part is a file reaches the
app (BentoML's parser would fetch a string 'image'), byte for byte, with the file's name in the scope."""

from __future__ import annotations

import asyncio
import json

import httpx

from bbt.serving.photo_form import PHOTO_NAME, PhotoForm

URL = "http://photos.example/photo.jpg"


class App:
    """Records what reached it: the scope and the whole body."""

    def __init__(self) -> None:
        self.scope: dict | None = None
        self.body = b""

    async def __call__(self, scope: dict, receive, send) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(request: httpx.Request, chunk: int = 7) -> tuple[App, int, dict | None]:
    """Send `request` through PhotoForm in chunks of `chunk` bytes: what reached the app, the status, the JSON."""
    body = request.read()
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(chunks) - 1}
                for i, part in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    app = App()
    scope = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"", "app": object(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}
    asyncio.run(PhotoForm(app)(scope, receive, send))
    body_sent = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    error = json.loads(body_sent) if app.scope is None else None
    return app, sent[0]["status"], error


def test_a_photo_file_reaches_the_app_unchanged_with_its_name() -> None:
    request = httpx.Request("POST", "http://x/classify", files={"image": ("shot 1.jpg", b"\xff\xd8" + bytes(300))},
                            data={"note": URL})  # a string in another field is never fetched
    app, status, _ = call(request)
    assert status == 200 and app.body == request.read() and app.scope[PHOTO_NAME] == "shot 1.jpg"


def test_a_url_for_the_photo_never_reaches_the_app() -> None:
    as_string = httpx.Request("POST", "http://x/classify", data={"image": URL}, files={"other": ("x", b"x")})
    beside_a_file = httpx.Request("POST", "http://x/classify",
                                  files=[("image", ("a.jpg", b"\xff\xd8")), ("image", (None, URL))])
    for request in (as_string, beside_a_file):
        app, status, error = call(request)
        assert app.scope is None and status == 400
        assert error == {"error": "the form has no file in the field 'image': send the photo as a file part "
                                  "named 'image', e.g. curl -F image=@photo.jpg URL/classify"}


def test_json_and_broken_forms_get_the_services_errors() -> None:
    app, status, error = call(httpx.Request("POST", "http://x/classify", json={"image": URL}))
    assert app.scope is None and status == 415 and "(got application/json)" in error["error"]
    for body in (b"--b\r\nno headers here", b"--b\r\nnot really multipart"):
        broken = httpx.Request("POST", "http://x/classify", content=body,
                               headers={"content-type": "multipart/form-data; boundary=b"})
        app, status, error = call(broken)
        assert app.scope is None and status == 400 and error["error"].startswith("the request body is not a valid form")


def raw_upload(filename: str) -> httpx.Request:
    """A form with the photo under this file name, written as it is (httpx would escape a NUL)."""
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="' + filename.encode() +
            b'"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\r\n--b--\r\n')
    return httpx.Request("POST", "http://x/classify", content=body,
                         headers={"content-type": "multipart/form-data; boundary=b"})


def test_a_file_name_bentoml_cannot_store_gets_a_400_naming_the_fix() -> None:
    for name in ("\x00", "a\x00.jpg", "x" * 241 + ".jpg", "\u00fc" * 121):  # the last: 242 bytes
        app, status, error = call(raw_upload(name))
        assert app.scope is None and status == 400 and error["error"].endswith("rename the photo, e.g. photo.jpg")
    app, status, _ = call(raw_upload("x" * 236 + ".jpg"))
    assert status == 200 and app.scope[PHOTO_NAME] == "x" * 236 + ".jpg"
