"""Render the templates in bbt/deploy/templates: nginx site, systemd unit and cloud-init user-data, from one set of settings."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from bbt.config import ServeParams
from bbt.deploy.instances import DEFAULT_INSTANCE_TYPE, INSTANCE_MEMORY_MIB, MemoryLimits
from bbt.review.feedback import FEEDBACK_DIR_ENV

# Room for the multipart envelope (boundaries, part headers) around a photo at the service's own limit.
MULTIPART_ROOM_KB = 64
SERVICE_PORT = 3000
# nginx waits this much longer than the service's serve.timeout_s, so the service's own JSON 504 is the answer.
PROXY_TIMEOUT_MARGIN_S = 15
# Supervisor + 2 workers use ~30 threads under a burst of 48 photos; a runaway gets stopped well before the host.
TASKS_MAX = 256


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS: where nginx listens for it, its certificate files, and the folder Let's Encrypt's challenges use."""

    listen: str = "443"
    certificate: str = "/etc/bbt/tls/fullchain.pem"
    key: str = "/etc/bbt/tls/privkey.pem"
    acme_root: str = "/var/www/letsencrypt"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[-1])

    @property
    def folder(self) -> str:
        return str(Path(self.certificate).parent)


@dataclass(frozen=True)
class SiteSettings:
    """What the nginx site needs: where it listens, where the bento listens, the service's limits, TLS."""

    listen: str = "80"
    upstream: str = f"127.0.0.1:{SERVICE_PORT}"
    max_upload_mb: float = ServeParams.max_upload_mb
    service_timeout_s: float = ServeParams.timeout_s
    proxy_timeout_margin_s: float = PROXY_TIMEOUT_MARGIN_S
    server_name: str = "_"
    default_server: bool = True
    proxy_connect_timeout_s: int = 5
    client_body_timeout_s: int = 60
    tls: TlsSettings | None = None
    # Behind a load balancer: the addresses it connects from, so the per-client limits see the real client.
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def for_service(cls, serve: ServeParams, **overrides: Any) -> SiteSettings:
        """The site in front of a service running with `serve` (params.yaml's serve section)."""
        return cls(**{"max_upload_mb": serve.max_upload_mb, "service_timeout_s": serve.timeout_s, **overrides})

    @property
    def proxy_timeout_s(self) -> int:
        return math.ceil(self.service_timeout_s + self.proxy_timeout_margin_s)

    @property
    def https_origin(self) -> str:
        """Where plain HTTP redirects to: the domain (or the Host asked for) on the HTTPS port."""
        host = "$host" if self.server_name == "_" else self.server_name
        port = "" if self.tls is None or self.tls.port == 443 else f":{self.tls.port}"
        return f"https://{host}{port}"


@dataclass(frozen=True)
class Archive:
    """Where the instance fetches the exported bento: one S3 object that its instance role may read."""

    bucket: str
    key: str
    region: str


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

    @property
    def feedback_dir(self) -> str:
        """Where the service keeps feedback when deployed with --keep-feedback."""
        return f"{self.home}/feedback"


def environment() -> jinja2.Environment:
    """The one Jinja environment of the deploy templates, read from the installed package (a wheel too)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("bbt.deploy", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
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
    """The nginx site config (limit zones, upstream and `server` blocks) for the http context."""
    values = {**settings.__dict__, "max_upload_mb": f"{settings.max_upload_mb:g}",
              "service_timeout_s": f"{settings.service_timeout_s:g}", "proxy_timeout_s": settings.proxy_timeout_s,
              "https_origin": settings.https_origin,
              "client_max_body_size": client_max_body_size(settings.max_upload_mb),
              "legacy_client_max_body_size": client_max_body_size(settings.max_upload_mb, base64=True)}
    return environment().get_template("nginx-site.conf.j2").render(**values)


def render_unit(bento_tag: str, layout: HostLayout = HostLayout(), port: int = SERVICE_PORT,
                memory: MemoryLimits | None = None, keep_feedback: bool = False) -> str:
    """The sandboxed systemd unit that runs `bentoml serve` as the non-root service user, restarted on failure.

    `memory` defaults to the limits for the default instance type. The service keeps no feedback unless
    `keep_feedback` (then in `layout.feedback_dir`), whatever the bento's params.yaml says.
    """
    memory = memory or MemoryLimits.for_instance(INSTANCE_MEMORY_MIB[DEFAULT_INSTANCE_TYPE])
    command = shlex.join(serve_command(f"{layout.venv}/bin/bentoml", bento_tag, port))
    return environment().get_template("bbt.service.j2").render(
        bento_tag=bento_tag, user=layout.user, home=layout.home, bentoml_home=layout.bentoml_home,
        serve_command=command, working_dir=bento_source_dir(layout.bentoml_home, bento_tag),
        memory_high_mib=memory.high_mib, memory_max_mib=memory.max_mib, tasks_max=TASKS_MAX,
        feedback_env=FEEDBACK_DIR_ENV, feedback_dir=layout.feedback_dir if keep_feedback else "",
    )


def render_user_data(deployment_id: str, bento_tag: str, archive: Archive, bentoml_version: str,
                     site: SiteSettings = SiteSettings(), layout: HostLayout = HostLayout(),
                     memory: MemoryLimits | None = None, keep_feedback: bool = False) -> str:
    """The cloud-config that turns a fresh Debian 12 instance into the service behind nginx.

    It holds no credentials: the instance reads `archive` with its instance role. With `site.tls`, the
    instance gets its certificate for `site.server_name` from Let's Encrypt (certbot) once that name reaches it.
    """
    return environment().get_template("cloud-init.yaml.j2").render(
        deployment_id=deployment_id, bento_tag=bento_tag, archive=archive, bentoml_version=bentoml_version,
        user=layout.user, home=layout.home, venv=layout.venv, bentoml_home=layout.bentoml_home,
        unit=render_unit(bento_tag, layout, memory=memory, keep_feedback=keep_feedback).rstrip("\n"), site=render_site(site).rstrip("\n"),
        tls=site.tls, domain=site.server_name,
    )
