"""What ships to EC2, checked with the real tools (no server started): `nginx -t` on the rendered site, `cloud-init
schema` on the rendered user-data, `systemd-analyze verify` on the rendered unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bbt.config import load_params
from bbt.deploy.render import (
    Archive,
    HostLayout,
    SiteSettings,
    TlsSettings,
    render_unit,
    render_user_data,
)
from bbt.deploy.staging import (
    check_nginx_config,
    self_signed_certificate,
    write_nginx_config,
)


def user_data(tls: bool = False) -> str:
    site = SiteSettings.for_service(load_params().serve, server_name="bbt.example.org" if tls else "_",
                                    tls=TlsSettings() if tls else None)
    return render_user_data("bbt-20261125-000000-abcd", "bbt-actor-service:abc123",
                            Archive("bbt-20261125-000000-abcd-123456789012", "bbt/bbt-20261125-000000-abcd/x.bento",
                                    "eu-west-1"), "1.4.40", site)


def with_test_certificate(site: str, folder: Path) -> str:
    """The site with its certificate paths moved to a self-signed pair in `folder` (the instance makes its own)."""
    certificate, key = self_signed_certificate(folder)
    return site.replace(TlsSettings.certificate, str(certificate)).replace(TlsSettings.key, str(key))


def test_nginx_accepts_the_production_site_config(tmp_path: Path) -> None:
    config = write_nginx_config(tmp_path, SiteSettings.for_service(load_params().serve))
    assert "test is successful" in check_nginx_config(config)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_site_config_works_inside_debians_stock_nginx_conf(tmp_path: Path, tls: bool) -> None:
    """As on the instance: /etc/nginx/nginx.conf including sites-enabled/bbt.conf (paths moved to tmp_path)."""
    stock = Path("/etc/nginx/nginx.conf").read_text()
    site = tmp_path / "sites-enabled" / "bbt.conf"
    site.parent.mkdir()
    shipped = yaml.safe_load(user_data(tls))["write_files"][1]["content"]
    site.write_text(with_test_certificate(shipped, tmp_path / "tls") if tls else shipped)
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
    assert {"python3", "python3-venv", "python3-boto3", "nginx"} <= set(config["packages"])
    assert "certbot" not in config["packages"], "no certificate without --https"
    assert config["users"][1]["name"] == "bbt" and config["users"][1]["system"] is True
    files = {f["path"]: f for f in config["write_files"]}
    assert set(files) == {"/etc/systemd/system/bbt.service", "/etc/nginx/sites-available/bbt.conf",
                          "/usr/local/sbin/bbt-setup"}
    assert files["/etc/systemd/system/bbt.service"]["content"] == render_unit("bbt-actor-service:abc123")
    script = files["/usr/local/sbin/bbt-setup"]["content"]
    assert ("eu-west-1 bbt-20261125-000000-abcd-123456789012 bbt/bbt-20261125-000000-abcd/x.bento "
            "/var/lib/bbt/bento.bento") in script, "boto3 fetches the archive with the instance role"
    assert (script.index("download_file") < script.index("bentoml import") < script.index("env/python/requirements.txt")
            < script.index("enable --now bbt"))
    assert config["runcmd"] == [["/usr/local/sbin/bbt-setup"]]
    # The site the instance runs is the one `nginx -t` and the staging test check here.
    prefix = tmp_path / "nginx"
    config_file = write_nginx_config(prefix, SiteSettings())
    (prefix / "sites" / "bbt.conf").write_text(files["/etc/nginx/sites-available/bbt.conf"]["content"])
    check_nginx_config(config_file)
    check_cloud_config(text, tmp_path)


def check_cloud_config(text: str, folder: Path) -> None:
    """`cloud-init schema` on the user-data, `bash -n` on each script it writes."""
    assert shutil.which("cloud-init"), "cloud-init is missing: `make system-deps` installs it from Debian"
    (folder / "user-data").write_text(text)
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(folder / "user-data")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    for written in yaml.safe_load(text)["write_files"]:
        if written["content"].startswith("#!/bin/bash"):
            checked = subprocess.run(["bash", "-n"], input=written["content"], capture_output=True, text=True,
                                     check=False)
            assert checked.returncode == 0, f"{written['path']}: {checked.stderr}"


def test_https_user_data_gets_a_certificate_and_redirects(tmp_path: Path) -> None:
    text = user_data(tls=True)
    config = yaml.safe_load(text)
    assert {"certbot", "openssl"} <= set(config["packages"])
    files = {f["path"]: f["content"] for f in config["write_files"]}
    certificate = files["/usr/local/sbin/bbt-certificate"]
    assert "certbot certonly --webroot -w /var/www/letsencrypt -d bbt.example.org" in certificate
    assert certificate.index("bbt-probe") < certificate.index("certbot certonly"), "asks Let's Encrypt only once the name reaches it"
    assert "--deploy-hook \"systemctl reload nginx\"" in certificate, "renewals (certbot.timer) reach nginx"
    assert "OnUnitInactiveSec=5min" in files["/etc/systemd/system/bbt-certificate.timer"]
    setup = files["/usr/local/sbin/bbt-setup"]
    assert setup.index("self-signed") < setup.index("nginx -t") < setup.index("enable --now bbt-certificate.timer")
    prefix = tmp_path / "nginx"
    config_file = write_nginx_config(prefix, SiteSettings())
    (prefix / "sites" / "bbt.conf").write_text(with_test_certificate(files["/etc/nginx/sites-available/bbt.conf"],
                                                                     tmp_path / "tls"))
    check_nginx_config(config_file)
    check_cloud_config(text, tmp_path)


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
