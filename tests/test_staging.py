"""The staging copy of production, for real: exported-then-imported bento behind Debian's nginx on loopback.

Also checks what ships to EC2 with the real tools: `nginx -t` on the rendered site, `cloud-init schema` on the
rendered user-data, `systemd-analyze verify` on the rendered unit.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from bbt import ACTORS
from bbt.config import load_params
from bbt.deploy.ready import wait_until_ready
from bbt.deploy.render import HostLayout, SiteSettings, render_unit, render_user_data
from bbt.deploy.staging import Staging, check_nginx_config, run_staging, write_nginx_config
from tests.conftest import Project, free_port

MB = 1024 * 1024
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy")


def user_data() -> str:
    return render_user_data("bbt-20261125-000000-abcd", "bbt-actor-service:abc123",
                            "https://bucket.s3.amazonaws.com/bbt/x.bento?X-Amz-Signature=1&X-Amz-Expires=3600",
                            "1.4.40", SiteSettings(max_upload_mb=load_params().serve.max_upload_mb))


def test_nginx_accepts_the_production_site_config(tmp_path: Path) -> None:
    config = write_nginx_config(tmp_path, SiteSettings(max_upload_mb=load_params().serve.max_upload_mb))
    assert "test is successful" in check_nginx_config(config)


def test_the_site_config_works_inside_debians_stock_nginx_conf(tmp_path: Path) -> None:
    """As on the instance: /etc/nginx/nginx.conf including sites-enabled/bbt.conf (paths moved to tmp_path)."""
    stock = Path("/etc/nginx/nginx.conf").read_text()
    site = tmp_path / "sites-enabled" / "bbt.conf"
    site.parent.mkdir()
    site.write_text(yaml.safe_load(user_data())["write_files"][1]["content"])
    moved = (stock.replace("/etc/nginx/sites-enabled/", f"{site.parent}/").replace("/run/nginx.pid", f"{tmp_path}/pid")
             .replace("/var/log/nginx/", f"{tmp_path}/"))
    assert moved.count(str(tmp_path)) >= 4, "the stock nginx.conf changed shape"
    (tmp_path / "nginx.conf").write_text(moved)
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-e", str(tmp_path / "error.log")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_user_data_is_a_valid_cloud_config(tmp_path: Path) -> None:
    text = user_data()
    config = yaml.safe_load(text)
    assert text.startswith("#cloud-config\n")
    assert {"python3", "python3-venv", "nginx"} <= set(config["packages"])
    assert config["users"][1]["name"] == "bbt" and config["users"][1]["system"] is True
    files = {f["path"]: f for f in config["write_files"]}
    assert set(files) == {"/etc/systemd/system/bbt.service", "/etc/nginx/sites-available/bbt.conf",
                          "/usr/local/sbin/bbt-setup"}
    assert files["/etc/systemd/system/bbt.service"]["content"] == render_unit("bbt-actor-service:abc123")
    script = files["/usr/local/sbin/bbt-setup"]["content"]
    assert "'https://bucket.s3.amazonaws.com/bbt/x.bento?X-Amz-Signature=1&X-Amz-Expires=3600'" in script
    assert (script.index("bentoml import") < script.index("env/python/requirements.txt")
            < script.index("enable --now bbt"))
    assert config["runcmd"] == [["/usr/local/sbin/bbt-setup"]]
    # The site the instance runs is the one `nginx -t` and the staging test check here.
    prefix = tmp_path / "nginx"
    config_file = write_nginx_config(prefix, SiteSettings())
    (prefix / "sites" / "bbt.conf").write_text(files["/etc/nginx/sites-available/bbt.conf"]["content"])
    check_nginx_config(config_file)

    assert shutil.which("cloud-init"), "cloud-init is missing: `make system-deps` installs it from Debian"
    (tmp_path / "user-data").write_text(text)
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(tmp_path / "user-data")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make system-deps` installs systemd"
    # systemd checks that ExecStart exists: point the layout at a folder holding a real bentoml.
    layout = HostLayout(home=str(tmp_path))
    Path(layout.venv, "bin").mkdir(parents=True)
    Path(layout.venv, "bin", "bentoml").symlink_to(Path(sys.executable).parent / "bentoml")
    unit = tmp_path / "bbt.service"
    unit.write_text(render_unit("bbt-actor-service:abc123", layout))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def staging(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staging]:
    """`bentoml build` in the trained project -> export -> import into a fresh store -> serve behind nginx."""
    saved = os.environ.get("BENTOML_HOME")
    with run_staging(trained_project.root, tmp_path_factory.mktemp("staging"),
                     serve=load_params(trained_project.root / "params.yaml").serve,
                     source_home=trained_project.bentoml_home) as running:
        yield running
    assert os.environ.get("BENTOML_HOME") == saved


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=60) as http:
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


@pytest.mark.integration
def test_the_staged_bento_was_imported_into_its_own_store(staging: Staging) -> None:
    name, version = staging.bento_tag.split(":")
    assert (staging.workdir / "bentoml" / "bentos" / name / version / "bento.yaml").is_file()
    assert (staging.workdir / "bentoml" / "models" / "bbt-actor-classifier").is_dir()
    # The service runs in the bento's src folder (as the unit's WorkingDirectory), where its params.yaml is.
    assert (staging.workdir / "bentoml" / "bentos" / name / version / "src" / "params.yaml").is_file()


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_nginx_refuses_an_11_mb_upload_with_a_json_413(staging: Staging, client: httpx.Client) -> None:
    response = client.post(f"{staging.url}/classify",
                           files={"image": ("big.jpg", os.urandom(11 * MB), "image/jpeg")})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "at most 10 MB" in response.json()["error"]
    assert all(h in response.headers for h in SECURITY_HEADERS)
    assert "client intended to send too large body" in (staging.workdir / "nginx" / "error.log").read_text()


@pytest.mark.integration
def test_uploads_under_the_limit_reach_the_service(staging: Staging, client: httpx.Client) -> None:
    """9 MB of noise passes nginx; the service itself explains that it is not an image."""
    response = client.post(f"{staging.url}/classify",
                           files={"image": ("noise.jpg", os.urandom(9 * MB), "image/jpeg")})
    assert response.status_code == 400, response.text
    assert "noise.jpg" in json.dumps(response.json())


@pytest.mark.integration
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
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", timeout_s=240, interval_s=0.5,
                         alive=lambda: command.poll() is None, what="`bbt deploy staging`")
        assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).headers["server"] == "nginx"
        # Stop it only once the command has said where it serves, as a user would (nginx answers a moment earlier).
        assert command.stdout is not None
        for line in command.stdout:
            announced.append(line)
            if "stops it" in line:
                break
    finally:
        command.send_signal(signal.SIGTERM)
        rest, _ = command.communicate(timeout=60)
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


@pytest.mark.integration
def test_bbt_deploy_ec2_ships_the_real_exported_bento(staging: Staging, trained_project: Project,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The whole `bbt deploy ec2` command against moto: the archive in S3 is the bento staging imported."""
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
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name="eu-west-1")
        ami = ec2.register_image(Name="debian-12-amd64", RootDeviceName="/dev/xvda")["ImageId"]
        # --no-wait: moto's public address is fake, and no traffic may leave this machine.
        result = CliRunner().invoke(app, ["deploy", "ec2", "--region", "eu-west-1", "--ami", ami,
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
