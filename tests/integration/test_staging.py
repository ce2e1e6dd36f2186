"""The staging copy of production, for real: exported-then-imported bento behind Debian's nginx on loopback, and
nginx's limits, TLS and JSON errors in front of a stand-in service. (The rendered files' checks with the real
tools, `nginx -t`, `cloud-init schema` and `systemd-analyze`, are in tests/unit/deploy/test_staging.py.)
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from bbt.config import load_params
from bbt.deploy.bento import bentoml_executable
from bbt.deploy.render import (
    SiteSettings,
    TlsSettings,
    bento_source_dir,
    render_unit,
    serve_command,
)
from bbt.deploy.staging import (
    Staging,
    check_nginx_config,
    nginx_executable,
    run_staging,
    self_signed_certificate,
    write_nginx_config,
)
from bbt.serving.ready import free_port, wait_until_ready
from tests.conftest import Project

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

pytestmark = pytest.mark.integration

MB = 1024 * 1024
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy")
SANDBOX = Path(__file__).resolve().parents[1] / "systemd_sandbox.py"


class _StandIn(http.server.BaseHTTPRequestHandler):
    """The service's stand-in behind nginx: 200 JSON for everything, after `delay_s` on /slow."""

    protocol_version = "HTTP/1.1"
    delay_s = 3.0

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/slow":
            time.sleep(self.delay_s)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def stand_in_service() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # nginx hanging up on a slow answer is the point
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def nginx_in_front(prefix: Path, site: SiteSettings) -> Iterator[Path]:
    """Debian's nginx with the rendered site (and the staging main config) until the block ends; yields the prefix."""
    config = write_nginx_config(prefix, site)
    check_nginx_config(config)
    with (prefix / "stdout.log").open("wb") as log:
        nginx = subprocess.Popen([nginx_executable(), "-p", str(prefix), "-c", str(config),
                                  "-e", str(prefix / "error.log")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://{site.listen}/livez", 10, 0.05, alive=lambda: nginx.poll() is None, what="nginx")
        yield prefix
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


@pytest.fixture
def stand_in() -> Iterator[http.server.ThreadingHTTPServer]:
    with stand_in_service() as server:
        yield server


def site_for(stand_in: http.server.ThreadingHTTPServer, **overrides: object) -> SiteSettings:
    return SiteSettings.for_service(load_params().serve, listen=f"127.0.0.1:{free_port()}",
                                    upstream=f"127.0.0.1:{stand_in.server_port}", **overrides)


def assert_json_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert all(h in response.headers for h in SECURITY_HEADERS)
    return response.json()


def test_nginx_answers_json_when_the_service_is_silent_or_down(tmp_path: Path, stand_in) -> None:
    site = site_for(stand_in, service_timeout_s=0.5, proxy_timeout_margin_s=0.5)
    with nginx_in_front(tmp_path, site), httpx.Client(base_url=f"http://{site.listen}", trust_env=False) as http:
        started = time.monotonic()
        assert "within 1 s" in assert_json_error(http.get("/slow"), 504)["error"]
        assert time.monotonic() - started < _StandIn.delay_s
        stand_in.shutdown()
        stand_in.server_close()
        down = http.get("/classify")
        assert "not answering" in assert_json_error(down, 502)["error"]
        assert down.headers["retry-after"] == "5"


def test_nginx_limits_each_client_but_not_a_person_on_the_page(tmp_path: Path, stand_in) -> None:
    site = site_for(stand_in)
    with nginx_in_front(tmp_path, site) as prefix, httpx.Client(base_url=f"http://{site.listen}", trust_env=False,
                                                                limits=httpx.Limits(max_connections=64)) as http:
        # A person: the page and its files in parallel (a browser opens 6 connections), then photos one by one.
        with ThreadPoolExecutor(6) as pool:
            page = list(pool.map(http.get, ["/", "/static/app.js", "/static/app.css", "/static/favicon.svg"] * 3))
        assert [r.status_code for r in page] == [200] * 12
        for _ in range(10):
            assert http.post("/classify", files={"image": ("a.jpg", b"x" * 50_000)}).status_code == 200
            time.sleep(0.25)
        # A script firing 60 photos at once: the burst passes, the rest is told to slow down.
        with ThreadPoolExecutor(16) as pool:
            burst = list(pool.map(lambda _: http.post("/classify", files={"image": ("a.jpg", b"x")}), range(60)))
        codes = [r.status_code for r in burst]
        assert codes.count(200) >= 20 and codes.count(429) >= 20, codes
        refused = next(r for r in burst if r.status_code == 429)
        assert "too many requests" in assert_json_error(refused, 429)["error"]
        assert refused.headers["retry-after"] == "1"
        time.sleep(1.5)

        # 300 stalled uploads from one address (the attack on the bare service): 16 wait, the rest are refused.
        stalled = []
        try:
            for _ in range(20):
                conn = socket.create_connection(("127.0.0.1", int(site.listen.rsplit(":", 1)[1])))
                conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
                stalled.append(conn)
            time.sleep(0.5)
            answered = []
            for conn in stalled:
                conn.settimeout(0.2)
                try:
                    answered.append(conn.recv(64))
                except TimeoutError:
                    pass
            assert len(answered) == 4 and all(a.startswith(b"HTTP/1.1 429") for a in answered), answered
        finally:
            for conn in stalled:
                conn.close()
        assert "limiting connections by zone" in (prefix / "error.log").read_text()
        time.sleep(0.5)
        assert http.get("/readyz").status_code == 200, "the limits let go once the connections close"


def test_metrics_are_not_served_through_nginx(tmp_path: Path, stand_in) -> None:
    site = site_for(stand_in)
    with nginx_in_front(tmp_path, site), httpx.Client(base_url=f"http://{site.listen}", trust_env=False) as http:
        for path in ("/metrics", "/metrics/", "/metrics?format=text", "/%6detrics"):
            assert "only on the host" in assert_json_error(http.get(path), 404)["error"], path
        assert http.get("/readyz").status_code == 200
    # On the host, straight to the service, it answers.
    assert httpx.get(f"http://127.0.0.1:{stand_in.server_port}/metrics", trust_env=False).status_code == 200


def tls_context(certificate: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate))
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions: the server must refuse
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_https_with_the_sites_tls_config(tmp_path: Path, stand_in) -> None:
    certificate, key = self_signed_certificate(tmp_path / "tls")
    https_port = free_port()
    acme = tmp_path / "acme"
    site = site_for(stand_in, tls=TlsSettings(listen=f"127.0.0.1:{https_port}", certificate=str(certificate),
                                              key=str(key), acme_root=str(acme)))
    (acme / ".well-known" / "acme-challenge").mkdir(parents=True)
    (acme / ".well-known" / "acme-challenge" / "token-1").write_text("token-1.key")
    with nginx_in_front(tmp_path / "nginx", site), \
            httpx.Client(trust_env=False, verify=tls_context(certificate)) as http:
        page = http.get(f"https://127.0.0.1:{https_port}/classify?x=1")
        assert page.status_code == 200 and page.json() == {"path": "/classify?x=1"}
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        assert "only on the host" in assert_json_error(http.get(f"https://127.0.0.1:{https_port}/metrics"), 404)[
            "error"]
        moved = http.get(f"http://{site.listen}/classify?x=1")
        assert (moved.status_code, moved.headers["location"]) == (301, f"https://127.0.0.1:{https_port}/classify?x=1")
        assert http.get(f"http://{site.listen}/readyz").status_code == 200, "probes answer on plain HTTP"
        challenge = http.get(f"http://{site.listen}/.well-known/acme-challenge/token-1")
        assert (challenge.status_code, challenge.text) == (200, "token-1.key"), "Let's Encrypt reads these over HTTP"
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with socket.create_connection(("127.0.0.1", https_port)) as raw, \
                    tls_context(certificate, version).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() == version.name.replace("v1_", "v1.")
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with socket.create_connection(("127.0.0.1", https_port)) as raw, pytest.raises(ssl.SSLError):
                tls_context(certificate, version).wrap_socket(raw, server_hostname="127.0.0.1")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{https_port}/", trust_env=False)


@pytest.fixture(scope="module")
def staging(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staging]:
    """`bentoml build` in the trained project -> export -> import into a fresh store -> serve behind nginx, with
    the HTTPS setup of `--https` (a self-signed certificate in place of Let's Encrypt's)."""
    saved = os.environ.get("BENTOML_HOME")
    with run_staging(trained_project.root, tmp_path_factory.mktemp("staging"),
                     serve=load_params(trained_project.root / "params.yaml").serve,
                     source_home=trained_project.bentoml_home, tls=True) as running:
        yield running
    assert os.environ.get("BENTOML_HOME") == saved


@pytest.fixture(scope="module")
def client(staging: Staging) -> Iterator[httpx.Client]:
    assert staging.url.startswith("https://") and staging.certificate is not None
    with httpx.Client(trust_env=False, timeout=60, verify=tls_context(staging.certificate)) as http:
        yield http


def training_photos(project: Project) -> dict[str, tuple[Path, np.ndarray]]:
    """For each actor, one photo of the training split with a single accepted face, and that face's box."""
    with np.load(project.root / "artifacts/faces/faces.npz") as faces, \
            np.load(project.root / "artifacts/features/split.npz") as split:
        images, labels, boxes, train = faces["images"], faces["labels"], faces["boxes"], split["train"]
    counts = {name: int((images == name).sum()) for name in set(images)}
    photos: dict[str, tuple[Path, np.ndarray]] = {}
    for index in sorted(train):
        if counts[images[index]] == 1 and labels[index] in ACTORS and labels[index] not in photos:
            photos[str(labels[index])] = (project.root / "data/raw" / str(images[index]), boxes[index])
    return photos


def overlap(a: dict[str, int], b: np.ndarray) -> float:
    ax, ay, aw, ah = a["x"], a["y"], a["w"], a["h"]
    bx, by, bw, bh = (int(v) for v in b)
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_the_staged_bento_was_imported_into_its_own_store(staging: Staging) -> None:
    name, version = staging.bento_tag.split(":")
    assert (staging.workdir / "bentoml" / "bentos" / name / version / "bento.yaml").is_file()
    assert (staging.workdir / "bentoml" / "models" / "bbt-actor-classifier").is_dir()
    # The service runs in the bento's src folder (as the unit's WorkingDirectory), where its params.yaml is.
    assert (staging.workdir / "bentoml" / "bentos" / name / version / "src" / "params.yaml").is_file()


def test_page_and_probes_load_through_nginx(staging: Staging, client: httpx.Client) -> None:
    page = client.get(f"{staging.url}/", headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["server"] == "nginx", "answered by nginx, not straight by the service"
    assert all(h in page.headers for h in SECURITY_HEADERS)
    assert "<form" in page.text or "<input" in page.text
    script = client.get(f"{staging.url}/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert script.status_code == 200 and script.headers.get("content-encoding") == "gzip"
    assert client.get(f"{staging.url}/readyz").status_code == 200
    assert client.get(f"{staging.url}/livez").status_code == 200


def test_classify_names_the_actor_of_real_photos_through_nginx(staging: Staging, client: httpx.Client,
                                                               trained_project: Project) -> None:
    photos = training_photos(trained_project)
    assert len(photos) == 4
    for actor, (photo, box) in photos.items():
        response = client.post(f"{staging.url}/classify",
                               files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        faces = response.json()["faces"]
        match = max(faces, key=lambda face: overlap(face["box"], box))
        assert overlap(match["box"], box) > 0.5, f"{photo.name}: the annotated face was not found: {faces}"
        assert match["label"] == actor, f"{photo.name}: expected {actor}, got {match}"


def test_nginx_refuses_an_11_mb_upload_with_a_json_413(staging: Staging, client: httpx.Client) -> None:
    response = client.post(f"{staging.url}/classify",
                           files={"image": ("big.jpg", os.urandom(11 * MB), "image/jpeg")})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "at most 10 MB" in response.json()["error"]
    assert all(h in response.headers for h in SECURITY_HEADERS)
    assert "client intended to send too large body" in (staging.workdir / "nginx" / "error.log").read_text()


def test_uploads_under_the_limit_reach_the_service(staging: Staging, client: httpx.Client) -> None:
    """9 MB of noise passes nginx; the service itself explains that it is not an image."""
    response = client.post(f"{staging.url}/classify",
                           files={"image": ("noise.jpg", os.urandom(9 * MB), "image/jpeg")})
    assert response.status_code == 400, response.text
    assert "noise.jpg" in json.dumps(response.json())


def test_plain_http_moves_to_https_and_metrics_stay_on_the_host(staging: Staging, client: httpx.Client) -> None:
    moved = client.get(f"{staging.http_url}/static/app.js")
    assert moved.status_code == 301 and moved.headers["location"] == f"{staging.url}/static/app.js"
    assert client.get(f"{staging.http_url}/readyz").status_code == 200, "probes answer on plain HTTP"
    assert "only on the host" in assert_json_error(client.get(f"{staging.url}/metrics"), 404)["error"]
    metrics = client.get(f"{staging.service_url}/metrics")
    assert metrics.status_code == 200 and "# TYPE bentoml_" in metrics.text


def test_the_service_serves_inside_the_units_sandbox(staging: Staging, trained_project: Project,
                                                     tmp_path: Path) -> None:
    """The staged bento under the unit's sandbox as far as it goes without systemd: the kernel side applied by
    tests/systemd_sandbox.py (SystemCallFilter, RestrictAddressFamilies, NoNewPrivileges, MemoryDenyWriteExecute)
    in a private mount namespace where everything but /tmp (its home is there) is read-only, as with
    ProtectSystem=strict. It starts, names the actors in real photos and serves /metrics."""
    if os.geteuid() != 0:
        pytest.skip("a private read-only mount namespace (unshare --mount) needs root")
    unit = tmp_path / "bbt.service"
    unit.write_text(render_unit(staging.bento_tag))
    home, port = staging.workdir, free_port()
    command = [sys.executable, str(SANDBOX), str(unit), "--",
               *serve_command(bentoml_executable(), staging.bento_tag, port)]
    shell = (f"mount --bind /tmp /tmp && mount --bind {shlex.quote(str(home))} {shlex.quote(str(home))} && "
             f"mount -o remount,bind,ro / && exec {shlex.join(command)}")
    env = {**os.environ, "HOME": str(home), "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    log = tmp_path / "sandboxed.log"
    with log.open("wb") as sink:
        service = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                                   cwd=bento_source_dir(home / "bentoml", staging.bento_tag), env=env,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/readyz", 240, 0.5, alive=lambda: service.poll() is None,
                         what=f"the sandboxed service (log: {log.read_text()[-3000:]})")
        for actor, (photo, _) in training_photos(trained_project).items():
            answer = httpx.post(f"{url}/classify", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                                trust_env=False, timeout=60)
            assert answer.status_code == 200, answer.text
            assert actor in [face["label"] for face in answer.json()["faces"]]
        assert httpx.get(f"{url}/metrics", trust_env=False).status_code == 200
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=60)
    assert "Operation not permitted" not in log.read_text() and "Read-only file system" not in log.read_text()


def test_bbt_deploy_staging_command_serves_until_sigterm_and_leaves_nothing(staging: Staging,
                                                                           trained_project: Project) -> None:
    """The documented command (`bbt deploy staging`, run by `make staging`), on the bento built above, stopped the
    way systemd, Docker and CI stop things: SIGTERM stops nginx and the service and removes the work folder,
    as Ctrl-C does."""
    port = free_port()
    command = subprocess.Popen(["bbt", "deploy", "staging", "--port", str(port), "--bento", staging.bento_tag],
                               cwd=trained_project.root, env=trained_project.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    announced: list[str] = []
    started: list[psutil.Process] = []
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", timeout_s=240, interval_s=0.5,
                         alive=lambda: command.poll() is None, what="`bbt deploy staging`")
        started = psutil.Process(command.pid).children(recursive=True)  # the service and nginx
        assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).headers["server"] == "nginx"
        # Stop it only once the command has said where it serves, as a user would (nginx answers a moment earlier).
        assert command.stdout is not None
        for line in command.stdout:
            announced.append(line)
            if "stops it" in line:
                break
    finally:
        command.send_signal(signal.SIGTERM)
        try:
            rest, _ = command.communicate(timeout=60)
        finally:  # whatever happened, the test leaves nothing running; what was left is asserted below
            left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            for process in [*left, *([psutil.Process(command.pid)] if command.poll() is None else [])]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
    assert left == [], f"left running after SIGTERM: {[p.cmdline() for p in left]}"
    output = "".join(announced) + rest
    assert command.returncode == 0, output
    assert f"on http://127.0.0.1:{port}/" in output and "stopped" in output
    workdir = re.search(r"the bento in (\S+) \.\.\.", output)
    assert workdir is not None, output
    assert not Path(workdir.group(1)).exists()
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", trust_env=False, timeout=2)
    left = subprocess.run(["pgrep", "-f", workdir.group(1)], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"processes left running: {left.stdout}"


def test_bbt_deploy_ec2_ships_the_real_exported_bento(staging: Staging, trained_project: Project,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The whole `bbt deploy ec2 --single` command against moto: the archive in S3 is the bento staging imported."""
    from moto import mock_aws
    from typer.testing import CliRunner

    from bbt.cli import app

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setenv("BENTOML_HOME", str(trained_project.bentoml_home))
    from moto.s3.models import FakeBucket

    from tests.unit.deploy.test_deploy import moto_over_https

    monkeypatch.setattr(FakeBucket, "get_permission", moto_over_https(FakeBucket.get_permission))
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name="eu-west-1")
        ami = ec2.register_image(Name="debian-12-amd64", RootDeviceName="/dev/xvda")["ImageId"]
        # --no-wait: moto's public address is fake, and no traffic may leave this machine.
        result = CliRunner().invoke(app, ["deploy", "ec2", "--single", "--region", "eu-west-1", "--ami", ami,
                                          "--bento", staging.bento_tag, "--no-wait"])
        assert result.exit_code == 0, result.output
        [reservation] = ec2.describe_instances()["Reservations"]
        instance = reservation["Instances"][0]
        uri = next(t["Value"] for t in instance["Tags"] if t["Key"] == "bbt:archive")
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        archive = tmp_path / "downloaded.bento"
        boto3.client("s3", region_name="eu-west-1").download_file(bucket, key, str(archive))
        assert f"http://{instance['PublicIpAddress']}/" in result.output
        encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        assert f"serve {staging.bento_tag} --host 127.0.0.1" in base64.b64decode(encoded["UserData"]["Value"]).decode()
    # The downloaded archive imports into an empty store and holds the staged bento, as on the instance.
    from bbt.deploy.bento import import_bento

    import_bento(archive, tmp_path / "instance-store")
    name, version = staging.bento_tag.split(":")
    imported = tmp_path / "instance-store" / "bentos" / name / version
    assert (imported / "bento.yaml").is_file()
    # What the instance's setup script pip-installs: the bento's pinned packages, bentoml itself among them.
    assert "bentoml==" in (imported / "env" / "python" / "requirements.txt").read_text()


def test_a_staged_deployment_keeps_no_feedback(staging: Staging, client: httpx.Client,
                                               trained_project: Project) -> None:
    """Like a public deployment (no --keep-feedback), staging refuses reports although the bento's params.yaml
    keeps feedback for `make run`, stores nothing, and its page offers no "wrong?"."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_browser import CHROMIUM, FLAGS

    photo, box = training_photos(trained_project)["sheldon"]
    found = client.post(f"{staging.url}/classify", files={"image": (photo.name, photo.read_bytes())}).json()["faces"]
    face = max(found, key=lambda f: overlap(f["box"], box))  # the reviewed face (a photo may show others too)
    refused = client.post(f"{staging.url}/feedback", files={"image": (photo.name, photo.read_bytes())},
                          data={**{k: str(v) for k, v in face["box"].items()}, "consent": "true",
                                "label": "raj" if face["label"] != "raj" else "howard"})
    assert refused.status_code == 403 and "feedback is off on this server" in refused.json()["error"]
    assert staging.feedback_dir is None
    assert not [p for p in staging.workdir.rglob("*") if p.is_file() and
                (p.name == "feedback.json" or p.stat().st_size == photo.stat().st_size
                 and p.read_bytes() == photo.read_bytes())]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=[*FLAGS, "--ignore-certificate-errors"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(staging.url + "/")
        assert page.get_attribute('meta[name="bbt-feedback"]', "content") == "off"
        page.set_input_files("#file", str(photo))
        page.wait_for_selector(".box", timeout=60_000)
        assert page.locator("button.wrong").count() == 0 and not page.locator("#feedback").is_visible()
        assert "never stored, unless you report a wrong answer" in page.inner_text("header")
        browser.close()
