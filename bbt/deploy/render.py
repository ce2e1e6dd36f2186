"""Render the deploy/ templates: nginx site, systemd unit and cloud-init user-data, from one set of settings."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bbt.config import ServeParams

TEMPLATES = Path(__file__).resolve().parents[2] / "deploy"
# Room for the multipart envelope (boundaries, part headers) around a photo at the service's own limit.
MULTIPART_ROOM_KB = 64
SERVICE_PORT = 3000


@dataclass(frozen=True)
class SiteSettings:
    """What the nginx site needs: where it listens, where the bento listens, and the upload limit."""

    listen: str = "80"
    upstream: str = f"127.0.0.1:{SERVICE_PORT}"
    max_upload_mb: float = ServeParams.max_upload_mb
    server_name: str = "_"
    default_server: bool = True
    proxy_timeout_s: int = 60
    proxy_connect_timeout_s: int = 5
    client_body_timeout_s: int = 60
    tls: bool = False


@dataclass(frozen=True)
class HostLayout:
    """Where the service lives on the instance: a system user owning a venv and a BentoML store."""

    user: str = "bbt"
    home: str = "/var/lib/bbt"

    @property
    def venv(self) -> str:
        return f"{self.home}/venv"

    @property
    def bentoml_home(self) -> str:
        return f"{self.home}/bentoml"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["shquote"] = shlex.quote
    return env


def client_max_body_size(max_upload_mb: float, base64: bool = False) -> str:
    """nginx's body limit for the service's upload limit (MiB), in KiB, with room for the request envelope.

    `base64`: the photo arrives as a data URL (the legacy /classify_image route), 4/3 of its size.
    """
    kib = max_upload_mb * 1024 * (4 / 3 if base64 else 1)
    return f"{math.ceil(kib) + MULTIPART_ROOM_KB}k"


def serve_command(bentoml: str, bento_tag: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The one `bentoml serve` command line used by the systemd unit and by the staging copy."""
    return [bentoml, "serve", bento_tag, "--host", host, "--port", str(port)]


def bento_source_dir(bentoml_home: str | Path, bento_tag: str) -> str:
    """The imported bento's `src` folder: the service reads params.yaml from its working directory."""
    name, version = bento_tag.split(":", 1)
    return f"{bentoml_home}/bentos/{name}/{version}/src"


def render_site(settings: SiteSettings) -> str:
    """The nginx site config (a `server` block plus its upstream) for the http context."""
    values = {**settings.__dict__, "max_upload_mb": f"{settings.max_upload_mb:g}",
              "client_max_body_size": client_max_body_size(settings.max_upload_mb),
              "legacy_client_max_body_size": client_max_body_size(settings.max_upload_mb, base64=True)}
    return _environment().get_template("nginx-site.conf.j2").render(**values)


def render_unit(bento_tag: str, layout: HostLayout = HostLayout(), port: int = SERVICE_PORT) -> str:
    """The systemd unit that runs `bentoml serve` as the non-root service user, restarted on failure."""
    command = shlex.join(serve_command(f"{layout.venv}/bin/bentoml", bento_tag, port))
    return _environment().get_template("bbt.service.j2").render(
        bento_tag=bento_tag, user=layout.user, home=layout.home, bentoml_home=layout.bentoml_home,
        serve_command=command, working_dir=bento_source_dir(layout.bentoml_home, bento_tag),
    )


def render_user_data(deployment_id: str, bento_tag: str, bento_url: str, bentoml_version: str,
                     site: SiteSettings = SiteSettings(), layout: HostLayout = HostLayout()) -> str:
    """The cloud-config that turns a fresh Debian 12 instance into the service behind nginx."""
    return _environment().get_template("cloud-init.yaml.j2").render(
        deployment_id=deployment_id, bento_tag=bento_tag, bento_url=bento_url, bentoml_version=bentoml_version,
        user=layout.user, home=layout.home, venv=layout.venv, bentoml_home=layout.bentoml_home,
        unit=render_unit(bento_tag, layout).rstrip("\n"), site=render_site(site).rstrip("\n"),
    )
