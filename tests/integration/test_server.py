"""Integration: the real `bentoml serve` (via `bbt serve`) with the champion trained on the real data."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bbt.registry.tracking import data_hash
from bbt.vision.faces import Box
from tests.conftest import Project, Server, start_server, stop_server

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Photo:
    """A dataset photo with one accepted, annotated face."""

    path: Path
    label: str
    box: Box

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def accepted_photos(project: Project, split: str) -> list[Photo]:
    """Photos whose one reviewed face is in the given split (train/test), smallest first: an actor's face (its
    label) or a stranger's (label 'unknown', the answer the service owes it)."""
    faces = np.load(project.root / "artifacts/faces/faces.npz")
    chosen = np.load(project.root / "artifacts/features/split.npz")[split]
    names = list(faces["images"])
    photos = [Photo(project.root / "data/raw" / str(faces["images"][i]), str(faces["labels"][i]),
                    Box(*(int(v) for v in faces["boxes"][i])))
              for i in chosen if names.count(faces["images"][i]) == 1]
    return sorted(photos, key=lambda p: p.path.stat().st_size)


def one_per_actor(project: Project) -> list[Photo]:
    seen: dict[str, Photo] = {}
    for photo in accepted_photos(project, "train"):
        if photo.path.suffix.lower() in (".jpg", ".jpeg"):
            seen.setdefault(photo.label, photo)
    return [seen[actor] for actor in sorted(seen)]


def box_of(face: dict) -> Box:
    return Box(**face["box"])


def post(server: Server, data: bytes, filename: str = "photo.jpg", field: str = "image",
         timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", files={field: (filename, data)}, timeout=timeout)


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# ---- the contract ------------------------------------------------------------------------------------------

def test_classify_names_the_right_actor_in_image_coordinates(bento_server: Server) -> None:
    for photo in one_per_actor(bento_server.project):
        response = post(bento_server, photo.data, photo.path.name)
        assert response.status_code == 200, response.text
        body = response.json()
        width, height = Image.open(photo.path).size
        assert body["image"] == {"width": width, "height": height}
        assert body["model"]["name"] == "bbt-actor-classifier" and body["model"]["version"].isdigit()
        matches = [f for f in body["faces"] if box_of(f).iou(photo.box) >= 0.5]
        assert matches, f"{photo.path.name}: no face near the annotated {photo.box} in {body['faces']}"
        face = matches[0]
        assert face["label"] == photo.label, f"{photo.path.name}: {face}"
        assert set(face["probabilities"]) == {"howard", "leonard", "raj", "sheldon"}
        assert face["confidence"] == max(face["probabilities"].values())
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
        assert face["distance"] <= face["threshold"] if face["label"] != "unknown" else \
            face["distance"] > face["threshold"]
        assert face["closest_actor"] == max(face["probabilities"], key=face["probabilities"].get)
        order = [(f["label"] == "unknown", -f["confidence"]) for f in body["faces"]]
        assert order == sorted(order), "named faces first, most confident first"


def test_strangers_of_the_held_out_split_are_unknown(bento_server: Server) -> None:
    """Every test-split photo whose one reviewed face is a stranger's: that face is answered 'unknown'."""
    strangers = [p for p in accepted_photos(bento_server.project, "test") if p.label == "unknown"]
    assert len(strangers) >= 3
    for photo in strangers:
        faces = post(bento_server, photo.data, photo.path.name).json()["faces"]
        matches = [f for f in faces if box_of(f).iou(photo.box) >= 0.5]
        assert matches and matches[0]["label"] == "unknown", f"{photo.path.name}: {matches}"


def test_the_champion_has_a_card_in_mlflow_and_the_page_links_the_served_one(trained_project: Project,
                                                                           bento_server: Server) -> None:
    card = trained_project.run("bbt", "card").stdout  # the @champion's, from MLflow (require_card)
    assert card.startswith("# Model card: bbt-actor-classifier version ")
    assert data_hash(trained_project.root / "data.dvc") in card and "false-accept rate" in card
    page = httpx.get(f"{bento_server.url}/").text
    assert '<a href="model-card">model card</a>' in page and "<span hidden>" not in page
    served = httpx.get(f"{bento_server.url}/model-card", headers={"Accept": "text/markdown"})
    assert served.status_code == 200 and served.text == card  # the copy that travelled into the BentoML store
    shown = httpx.get(f"{bento_server.url}/model-card")
    assert shown.headers["content-type"].startswith("text/html") and "# Model card: bbt-actor-classifier" in shown.text


def test_no_face_is_an_empty_list(bento_server: Server) -> None:
    blank = encode(Image.new("RGB", (320, 240), (200, 180, 150)), "PNG")
    response = post(bento_server, blank, "wall.png")
    assert response.status_code == 200
    assert response.json()["faces"] == []


def test_legacy_route_answers_in_the_original_format(bento_server: Server) -> None:
    photo = one_per_actor(bento_server.project)[0]
    data_url = "data:image/jpeg;base64," + base64.b64encode(photo.data).decode()
    response = httpx.post(f"{bento_server.url}/classify_image", data={"image_data": data_url}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    answer = response.json()
    assert isinstance(answer, list) and answer
    assert answer[0]["class"] == photo.label
    assert answer[0]["class_dictionary"] == {"howard": 0, "leonard": 1, "raj": 2, "sheldon": 3}
    assert len(answer[0]["class_probability"]) == 4
    assert abs(sum(answer[0]["class_probability"]) - 100) < 0.1
    assert max(answer[0]["class_probability"]) == answer[0]["class_probability"][answer[0]["class_dictionary"][photo.label]]

    multipart = httpx.post(f"{bento_server.url}/classify_image", files={"image_data": (None, data_url)}, timeout=120)
    assert multipart.status_code == 200 and multipart.json() == answer
    assert_error(httpx.post(f"{bento_server.url}/classify_image", data={"image": data_url}), 400, "image_data")
    assert_error(httpx.post(f"{bento_server.url}/classify_image", data={"image_data": "data:image/png;base64,%%%"}),
                 400, "base64")
    text_url = "data:text/plain;base64," + base64.b64encode(b"hello world").decode()
    assert_error(httpx.post(f"{bento_server.url}/classify_image", data={"image_data": text_url}), 400, "not a")


def test_a_photo_just_under_the_limit_is_taken_by_both_routes(bento_server: Server) -> None:
    # A real photo padded to 9.5 MB (JPEG decoders ignore what follows the image): old pages post it URL-encoded,
    # where the base64 of random bytes grows by another ~6 %.
    photo = one_per_actor(bento_server.project)[0]
    padded = photo.data + np.random.default_rng(0).bytes(int(9.5 * 1024 * 1024) - len(photo.data))
    data_url = "data:image/jpeg;base64," + base64.b64encode(padded).decode()
    legacy = httpx.post(f"{bento_server.url}/classify_image", data={"image_data": data_url}, timeout=120)
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()[0]["class"] == photo.label
    assert post(bento_server, padded).status_code == 200


def test_probes_metrics_openapi_and_page(bento_server: Server) -> None:
    assert httpx.get(f"{bento_server.url}/livez").status_code == 200
    assert httpx.get(f"{bento_server.url}/readyz").status_code == 200
    assert_error(httpx.get(f"{bento_server.url}/no/such/page"), 404, "GET /no/such/page", "/classify")
    assert_error(httpx.put(f"{bento_server.url}/classify"), 405)
    # The page's template is served filled in at /, not raw under /static.
    assert_error(httpx.get(f"{bento_server.url}/static/index.html"), 404, "the page is at /")
    post(bento_server, one_per_actor(bento_server.project)[0].data)
    metrics = httpx.get(f"{bento_server.url}/metrics").text
    for stage in ("decode", "detect", "features", "classify"):
        assert f'bbt_stage_seconds_count{{stage="{stage}"}}' in metrics, stage
    spec = httpx.get(f"{bento_server.url}/docs.json").json()
    assert {"/classify", "/classify_image", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/classify"]["post"]["requestBody"]["content"]
    page = httpx.get(f"{bento_server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = [page.text] + [httpx.get(f"{bento_server.url}/static/{name}").text for name in ("app.js", "app.css")]
    for text in assets:  # no CDN: everything the page loads comes from this server
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


# ---- bad input: a clear 4xx JSON error, never a 500 ---------------------------------------------------------

def test_every_bad_input_gets_a_clear_4xx(bento_server: Server) -> None:
    url = f"{bento_server.url}/classify"
    real = one_per_actor(bento_server.project)[0].data
    assert_error(httpx.post(url), 415, "multipart/form-data")
    assert_error(httpx.post(url, json={"image": "photo.jpg"}), 415, "multipart/form-data")
    assert_error(httpx.post(url, files={"photo": ("a.jpg", real)}), 400, "'image'")
    assert_error(httpx.post(url, data={"image": "http://127.0.0.1:9/photo.jpg"}, files={"other": ("x", b"x")}),
                 400, "'image'")
    assert_error(post(bento_server, b""), 400, "empty")
    assert_error(post(bento_server, b"this is a plain text file\n" * 20, "notes.txt"), 400, "not a recognised image")
    assert_error(post(bento_server, real[: len(real) // 2]), 400, "truncated")
    assert_error(post(bento_server, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg"), 400, "not a recognised")
    assert_error(post(bento_server, encode(Image.new("RGB", (64, 64)), "ICO"), "x.ico"), 400, "ICO", "not supported")
    assert_error(post(bento_server, encode(Image.new("RGB", (64, 64)), "TGA"), "x.tga"), 400, "not supported")
    huge = encode(Image.new("L", (7000, 6000)), "PNG")  # 42 megapixels in a few kB
    assert_error(post(bento_server, huge, "huge.png"), 400, "megapixel")
    assert_error(post(bento_server, png_claiming(100_000, 100_000), "bomb.png"), 400, "megapixel")
    assert_error(httpx.post(url, content=b"--x\r\nnot really multipart", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400)
    # Found by fuzzing (tests/test_fuzz.py): the form parser's own words, with what to send instead.
    no_disposition_colon = (b'--x\r\nContent-Disposition form-data; name="image"; filename="a.jpg"\r\n\r\nabc\r\n'
                            b"--x--\r\n")
    assert_error(httpx.post(url, content=no_disposition_colon, headers={
        "content-type": "multipart/form-data; boundary=x"}), 400, "not a valid form", "field 'image'")
    two_files = httpx.post(f"{bento_server.url}/classify_image",
                           files=[("image_data", ("a", b"a")), ("image_data", ("b", b"b"))])
    assert_error(two_files, 400, "not a valid form (too many files", "'image_data'")
    assert_error(httpx.get(url), 405, "GET /classify: method not allowed", "POST")
    # No redirect built from the Host header: a trailing slash is an unknown route.
    assert_error(httpx.post(f"{url}/", headers={"host": "evil.example"}, files={"image": ("a.jpg", real)}), 404,
                 "/classify")
    assert httpx.get(f"{bento_server.url}/readyz").status_code == 200


def test_uploads_over_the_limit_are_refused_before_reading(bento_server: Server) -> None:
    eleven_mb = b"\xff\xd8" + bytes(11 * 1024 * 1024)
    assert_error(post(bento_server, eleven_mb, "big.jpg"), 413, "10 MB")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(11):
            yield bytes(1024 * 1024)
        yield b"\r\n--b--\r\n"

    streamed = httpx.post(f"{bento_server.url}/classify", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=b"}, timeout=60)
    assert_error(streamed, 413, "10 MB")
    legacy = "data:image/jpeg;base64," + base64.b64encode(eleven_mb).decode()
    assert_error(httpx.post(f"{bento_server.url}/classify_image", data={"image_data": legacy}, timeout=60), 413)
    assert httpx.get(f"{bento_server.url}/readyz").status_code == 200


def test_unusual_images_are_handled_like_the_plain_photo(bento_server: Server) -> None:
    photo = one_per_actor(bento_server.project)[-1]
    original = Image.open(photo.path).convert("RGB")
    reference = post(bento_server, encode(original, "PNG"), "plain.png").json()["faces"]
    assert reference, "the plain photo must have a face for this comparison"
    gray = original.convert("L")
    variants = {
        "grayscale.png": encode(gray, "PNG"),
        "alpha.png": encode(original.convert("RGBA"), "PNG"),
        "16bit.png": encode(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"),
        "cmyk.jpg": encode(original.convert("CMYK"), "JPEG", quality=98),
    }
    for name, data in variants.items():
        response = post(bento_server, data, name)
        assert response.status_code == 200, f"{name}: {response.text}"
        faces = response.json()["faces"]
        assert any(box_of(f).iou(box_of(reference[0])) >= 0.8 for f in faces), f"{name}: {faces} vs {reference}"


def test_exif_rotation_gives_upright_coordinates(bento_server: Server) -> None:
    photo = one_per_actor(bento_server.project)[0]
    upright = Image.open(photo.path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; viewers turn it right to show it upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    # Lossless, so the upright pixels are exactly the photo's: the boxes must be the photo's own.
    response = post(bento_server, encode(stored, "PNG", exif=exif.tobytes()), "rotated.png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": upright.width, "height": upright.height}
    assert any(box_of(f).iou(photo.box) >= 0.5 and f["label"] == photo.label for f in body["faces"]), body


# ---- concurrency and fuzzing ----------------------------------------------------------------------------------

def test_32_parallel_requests_all_succeed(bento_server: Server) -> None:
    """32 clients at once, each retrying after Retry-After when a worker is full (serve.max_pending per worker,
    and the connections do not split evenly between the workers) or has serve.max_uploads_per_client of this
    address's requests open (a 429): every one gets its answer."""
    held_out = accepted_photos(bento_server.project, "test")
    batch = [held_out[i % len(held_out)] for i in range(32)]
    busy: list[httpx.Response] = []

    def patient(photo: Photo) -> httpx.Response:
        for _ in range(30):
            response = post(bento_server, photo.data, photo.path.name, timeout=300)
            if response.status_code not in (429, 503):
                return response
            busy.append(response)
            time.sleep(float(response.headers["retry-after"]))
        return response

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(patient, batch))
    assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses if r.status_code != 200]
    for response in busy:  # a full worker says so, in JSON, with when to come back
        if response.status_code == 429:
            assert_error(response, 429, "127.0.0.1 already has", "uploads open in this worker")
        else:
            assert_error(response, 503, "busy", "retry in")
        assert int(response.headers["retry-after"]) >= 1
    right = 0
    for photo, response in zip(batch[: len(held_out)], responses):
        matches = [f for f in response.json()["faces"] if box_of(f).iou(photo.box) >= 0.5]
        right += bool(matches) and matches[0]["label"] == photo.label
    # The held-out photos: the served model does as well as `dvc repro`'s evaluation said (about 0.89).
    assert right / len(held_out) >= 0.75, f"{right}/{len(held_out)} held-out faces named right"


def trickle_a_photo(server: Server, source: str, stop: threading.Event) -> None:
    """A client on loopback address `source` declaring a 1 MB multipart photo and sending it a byte every 0.5 s."""
    port = int(server.url.rsplit(":", 1)[1])
    preamble = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n" + preamble)
        while not stop.wait(0.5):
            try:
                sock.sendall(b"\xff")
            except OSError:  # cut off (408 past serve.upload_timeout_s)
                return


def test_slow_uploads_do_not_starve_valid_photos(bento_server: Server) -> None:
    """Issue 26: a client trickling its body holds a connection, not a place in a worker's budget (a photo enters
    it once its body has arrived). 40 clients, each on an address of its own (more than the two workers'
    serve.max_pending places, which they all held before), trickle for the whole test while 10 valid photos are
    sent: every valid photo is answered 200."""
    photos = one_per_actor(bento_server.project)
    stop = threading.Event()
    tricklers = [threading.Thread(target=trickle_a_photo, args=(bento_server, f"127.0.0.{10 + i}", stop))
                 for i in range(40)]
    for thread in tricklers:
        thread.start()
    try:
        time.sleep(1)  # all of them are open and trickling
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda i: post(bento_server, photos[i % len(photos)].data, timeout=60),
                                    range(10)))
    finally:
        stop.set()
        for thread in tricklers:
            thread.join(10)
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers if a.status_code != 200]


FIELD_NAMES = st.sampled_from(["image", "image_data", "photo", "", "IMAGE"])
CONTENT_TYPES = st.sampled_from(["image/jpeg", "application/octet-stream", "text/plain", ""])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(["/classify", "/classify_image"]), field=FIELD_NAMES, content_type=CONTENT_TYPES,
       payload=st.one_of(st.binary(max_size=2048), st.text(max_size=200).map(str.encode)),
       flips=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), mutate=st.booleans())
def test_fuzzed_requests_never_get_a_5xx(bento_server: Server, route: str, field: str, content_type: str,
                                         payload: bytes, flips: list[int], mutate: bool) -> None:
    if mutate:  # a real photo with a few bytes changed: exercises the decoders, not only the form parser
        data = bytearray(one_per_actor(bento_server.project)[0].data)
        for position in flips:
            data[position % len(data)] ^= 0xA5
        payload = bytes(data)
    files = {field or "file": ("fuzz", payload, content_type or "application/octet-stream")}
    response = httpx.post(f"{bento_server.url}{route}", files=files, timeout=120)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()


def test_raw_bodies_never_get_a_5xx(bento_server: Server) -> None:
    for content_type in ("application/json", "multipart/form-data", "multipart/form-data; boundary=",
                         "application/x-www-form-urlencoded", "text/plain", "image/jpeg"):
        for body in (b"", b"{}", b"image=x", b"\x00" * 100, b"--\r\n\r\n"):
            for route in ("/classify", "/classify_image"):
                response = httpx.post(f"{bento_server.url}{route}", content=body,
                                      headers={"content-type": content_type})
                assert 400 <= response.status_code < 500, (route, content_type, body, response.text)
                assert response.json()["error"]


# ---- the built bento ------------------------------------------------------------------------------------------

def test_bento_builds_offline_and_serves(trained_project: Project, tmp_path: Path) -> None:
    offline = {**trained_project.env, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "UV_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    built = Project(trained_project.root, offline).run("bentoml", "build", "--output", "tag", timeout=300)
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("bbt-actor-service:"), built.stdout
    # Served from elsewhere: the bento carries the code, params.yaml and the model it was built with.
    server = start_server(trained_project, ["bentoml", "serve", tag], tmp_path / "bento.log", cwd=tmp_path)
    try:
        photo = one_per_actor(trained_project)[0]
        response = post(server, photo.data, photo.path.name)
        assert response.status_code == 200, response.text
        assert any(f["label"] == photo.label for f in response.json()["faces"])
    finally:
        stop_server(server)


# ---- one server among others, and its shutdown ----------------------------------------------------------------

def requests_counted(metrics: str, endpoint: str) -> int:
    """BentoML's request count for one route, summed over status codes and workers, from a /metrics text."""
    prefix = "bentoml_service_request_duration_seconds_count{"
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith(prefix) and f'endpoint="{endpoint}"' in line)


def test_a_second_server_counts_only_its_requests_and_sigterm_stops_it_all(bento_server: Server,
                                                                           tmp_path: Path) -> None:
    """Issue 12: every server on one BENTOML_HOME shared (and wiped) one Prometheus folder, so /metrics
    counted other servers' requests; and SIGTERM (what systemd, Docker and CI send) must stop everything."""
    import psutil

    post(bento_server, one_per_actor(bento_server.project)[0].data)  # the first server has requests of its own
    second = start_server(bento_server.project, ["bbt", "serve"], tmp_path / "second.log")
    try:
        for photo in one_per_actor(bento_server.project)[:3]:
            assert post(second, photo.data).status_code == 200
        assert requests_counted(httpx.get(f"{second.url}/metrics").text, "/classify") == 3
        assert requests_counted(httpx.get(f"{bento_server.url}/metrics").text, "/classify") >= 1
        workers = psutil.Process(second.process.pid).children(recursive=True)
        folders = {w.environ().get("PROMETHEUS_MULTIPROC_DIR") for w in workers} - {None}
        assert len(folders) == 1, folders
        second.process.send_signal(signal.SIGTERM)  # the command's process only, as systemd's first signal
        second.process.wait(timeout=60)
    finally:
        stop_server(second)
    # The warm parent ends with the supervisor (PR_SET_PDEATHSIG): a process holding a model takes a moment to exit.
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not [w for w in alive if w.status() != psutil.STATUS_ZOMBIE]
    assert not Path(folders.pop()).exists()
    assert httpx.get(f"{bento_server.url}/readyz").status_code == 200  # the other server is untouched


def test_a_killed_warm_parent_is_started_again_and_the_service_answers_after(bento_server: Server,
                                                                             tmp_path: Path) -> None:
    """Issue 26: the warm parent the photo processes fork from (bbt/serving/supervisor.py) died for good with
    kill -9 or the OOM killer, and every worker stayed not ready. The supervisor starts it again; the workers
    reconnect; /readyz and /classify answer within a minute, as after a worker's death."""
    import psutil

    server = start_server(bento_server.project, ["bbt", "serve"], tmp_path / "server.log")
    try:
        def parents() -> set[int]:  # the supervisor's children running photo work (not their forks)
            found = set()
            for process in psutil.Process(server.process.pid).children(recursive=True):
                try:
                    if (process.status() != psutil.STATUS_ZOMBIE
                            and "bbt.serving.sandbox_process" in " ".join(process.cmdline())
                            and "bbt.serving.sandbox_process" not in " ".join(process.parent().cmdline())):
                        found.add(process.pid)
                except psutil.Error:
                    pass
            return found

        (first,) = parents()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (parents() - {first} and httpx.get(f"{server.url}/readyz").status_code == 200):
            assert time.monotonic() < deadline, f"not ready again within 60 s:\n{server.log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert len(parents()) == 1
        photo = one_per_actor(bento_server.project)[0]
        response = post(server, photo.data)
        assert response.status_code == 200 and photo.label in {f["label"] for f in response.json()["faces"]}
        assert "started a new one" in server.log.read_text()
    finally:
        stop_server(server)
