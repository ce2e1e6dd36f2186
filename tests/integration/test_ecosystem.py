"""Integration: each tool's own client answers a photo as /classify does: MLflow's pyfunc, in process and under
`mlflow models serve`, on the champion the trained project registered, and BentoML's clients against `bbt serve`;
BentoML's schema and docs page show /classify, and its parsers are never handed a URL to fetch."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import bentoml
import httpx
import pytest

from tests.conftest import Project, Server, start_server, stop_server
from tests.integration.test_server import accepted_photos, post

pytestmark = pytest.mark.integration

CHAMPION = "models:/bbt-actor-classifier@champion"


@pytest.fixture(scope="module")
def photos(trained_project: Project) -> list[bytes]:
    """Held-out photos (an actor's and a stranger's face among them), and bytes that are no photo at all."""
    chosen = accepted_photos(trained_project, "test")
    return [chosen[0].data, chosen[len(chosen) // 2].data, chosen[-1].data]


@pytest.fixture(scope="module")
def classified(bento_server: Server, photos: list[bytes]) -> list[list[dict]]:
    """What /classify answers for each photo: its faces."""
    answers = []
    for data in photos:
        response = post(bento_server, data)
        assert response.status_code == 200, response.text
        answers.append(response.json()["faces"])
    assert any(answer for answer in answers), "the chosen photos should show faces"
    return answers


def test_the_pyfunc_answers_a_photo_as_classify_does(trained_project: Project, photos: list[bytes],
                                                     classified: list[list[dict]], tmp_path: Path) -> None:
    paths = []
    for number, data in enumerate(photos):
        paths.append(tmp_path / f"photo{number}")
        paths[-1].write_bytes(data)
    script = ("import json, sys, mlflow\n"
              f"model = mlflow.pyfunc.load_model({CHAMPION!r})\n"
              "photos = [open(path, 'rb').read() for path in sys.argv[1:]]\n"
              "print(json.dumps(model.predict(photos + [b'not a photo'])))\n")
    ran = trained_project.run("python", "-c", script, *map(str, paths))
    answers = json.loads(ran.stdout.splitlines()[-1])
    assert [answer["faces"] for answer in answers[:-1]] == classified
    assert answers[-1]["faces"] == [] and "not a recognised image" in answers[-1]["error"]


def test_mlflow_models_serve_answers_a_photo_as_classify_does(trained_project: Project, photos: list[bytes],
                                                              classified: list[list[dict]]) -> None:
    server = start_server(trained_project, ["mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local"],
                          trained_project.root / "mlflow-serve.log", ready_path="/ping")
    try:
        body = {"inputs": [base64.b64encode(data).decode() for data in photos]}
        response = httpx.post(f"{server.url}/invocations", json=body, timeout=120)
    finally:
        stop_server(server)
    assert response.status_code == 200, response.text
    assert [answer["faces"] for answer in response.json()["predictions"]] == classified


def photo_files(photos: list[bytes], folder: Path) -> list[Path]:
    paths = []
    for number, data in enumerate(photos):
        paths.append(folder / f"photo{number}.jpg")
        paths[-1].write_bytes(data)
    return paths


def test_bentoml_clients_answer_a_photo_as_classify_does(bento_server: Server, photos: list[bytes],
                                                         classified: list[list[dict]], tmp_path: Path) -> None:
    paths = photo_files(photos, tmp_path)
    with bentoml.SyncHTTPClient(bento_server.url) as client:
        assert [client.classify(image=path)["faces"] for path in paths] == classified

    async def classify_all() -> list[list[dict]]:
        async with bentoml.AsyncHTTPClient(bento_server.url) as client:
            return [(await client.classify(image=path))["faces"] for path in paths]

    assert asyncio.run(classify_all()) == classified


def test_bentoml_schema_and_docs_page_show_classify(bento_server: Server) -> None:
    routes = httpx.get(f"{bento_server.url}/schema.json").json()["routes"]
    classify = next(route for route in routes if route["name"] == "classify")
    assert classify["route"] == "/classify" and classify["input"]["required"] == ["image"]
    assert "faces" in classify["output"]["properties"]
    docs = httpx.get(f"{bento_server.url}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert httpx.get(f"{bento_server.url}/static_content/swagger-initializer.js").status_code == 200
    assert "/classify" in httpx.get(f"{bento_server.url}/docs.json").json()["paths"]
    assert "drop" in httpx.get(f"{bento_server.url}/").text.lower()  # / stays this service's page


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a few JPEG-looking bytes, after noting what was asked for."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\xff\xd8\xff")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def proxied_server(trained_project: Project, tmp_path: Path) -> Iterator[Server]:
    """`bbt serve` whose every outgoing HTTP request goes through a local recording proxy (Recorder): BentoML's
    fetch refuses loopback and private addresses, but not its proxy, so a URL anywhere would reach the recorder."""
    Recorder.hits = []
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{recorder.server_port}"
    proxied = Project(trained_project.root, {**trained_project.env, "HTTP_PROXY": proxy, "http_proxy": proxy,
                                             "NO_PROXY": "", "no_proxy": ""})
    server = start_server(proxied, ["bbt", "serve"], tmp_path / "bbt-serve-proxied.log")
    yield server
    stop_server(server)
    recorder.shutdown()
    thread.join()


def test_classify_never_fetches_a_url_given_for_the_photo(proxied_server: Server, photos: list[bytes]) -> None:
    url = f"{proxied_server.url}/classify"
    photo_url = "http://photos.example/photo.jpg"
    as_field = httpx.post(url, data={"image": photo_url}, files={"other": ("x", b"x")})
    beside_a_file = httpx.post(url, files=[("image", ("a.jpg", photos[0])), ("image", (None, photo_url))])
    as_json = httpx.post(url, json={"image": photo_url})
    for response in (as_field, beside_a_file):
        assert response.status_code == 400 and "no file in the field 'image'" in response.json()["error"]
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]
    assert Recorder.hits == []
