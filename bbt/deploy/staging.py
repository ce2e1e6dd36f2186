"""The local staging copy of production: the exported-then-imported bento behind Debian's nginx, on loopback.

Same artefacts as EC2: the archive `bentoml export` writes, imported into a fresh BENTOML_HOME, served by the
command line of the systemd unit, behind the nginx site config rendered from the same template.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bbt.config import ServeParams
from bbt.deploy import DeployError
from bbt.deploy.bento import bentoml_executable, build_bento, export_bento, import_bento
from bbt.deploy.render import (
    SiteSettings,
    TlsSettings,
    bento_source_dir,
    environment,
    render_site,
    serve_command,
)
from bbt.deploy.shutdown import stop_process_tree
from bbt.review.feedback import FEEDBACK_DIR_ENV
from bbt.serving.ready import NotReady, free_port, wait_until_ready

log = logging.getLogger(__name__)
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
MIME_TYPES = Path("/etc/nginx/mime.types")


@dataclass(frozen=True)
class Staging:
    """A running staging copy: `url` goes through nginx, `service_url` straight to `bentoml serve`.

    With TLS, `url` is HTTPS with the self-signed `certificate`, and `http_url` redirects to it.
    """

    url: str
    http_url: str
    service_url: str
    bento_tag: str
    workdir: Path
    certificate: Path | None = None
    feedback_dir: Path | None = None  # where the service keeps feedback (None: it keeps none)


def nginx_executable() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        raise DeployError("nginx is not installed: run `make system-deps` (apt-get install nginx)")
    return found


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A week-long certificate for `host` and localhost, with its key (openssl); returns (certificate, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DeployError("openssl is not installed: run `make system-deps` (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key = folder / "certificate.pem", folder / "key.pem"
    result = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                             "-nodes", "-days", "7", "-subj", "/CN=bbt staging",
                             "-addext", f"subjectAltName=IP:{host},DNS:localhost",
                             "-keyout", str(key), "-out", str(certificate)],
                            check=False, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise DeployError(f"openssl could not make the staging certificate:\n{result.stderr.strip()}")
    return certificate, key


def write_nginx_config(prefix: Path, site: SiteSettings) -> Path:
    """Render the site config and a private main config around it; returns the main config's path."""
    prefix.mkdir(parents=True, exist_ok=True)
    for name in NGINX_TEMP_DIRS:
        (prefix / name).mkdir(exist_ok=True)
    site_file = prefix / "sites" / "bbt.conf"
    site_file.parent.mkdir(exist_ok=True)
    site_file.write_text(render_site(site))
    # A root master hands requests to workers as `nobody` unless told otherwise; they could not reach our files.
    user = getpass.getuser() if os.geteuid() == 0 else None
    main = prefix / "nginx.conf"
    main.write_text(environment().get_template("nginx-staging.conf.j2").render(
        prefix=prefix, site=site_file, mime_types=MIME_TYPES, user=user))
    return main


def check_nginx_config(config: Path) -> str:
    """`nginx -t` on a config written by `write_nginx_config`; returns nginx's report."""
    prefix = config.parent
    result = subprocess.run([nginx_executable(), "-t", "-p", str(prefix), "-c", str(config),
                             "-e", str(prefix / "error.log")], check=False, capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        raise DeployError(f"nginx rejects {config}:\n{result.stderr.strip()}")
    return result.stderr


@contextmanager
def _started(command: list[str], log_file: Path, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    try:
        yield process
    finally:
        stop_process_tree(process)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def service_environment(bentoml_home: Path, feedback_dir: Path | None = None) -> dict[str, str]:
    """The staging service's environment, as the systemd unit sets it: its own store, and feedback off unless
    `feedback_dir` (the bento's params.yaml keeps it on for `make run`)."""
    return {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true",
            FEEDBACK_DIR_ENV: str(feedback_dir or "")}


@contextmanager
def run_staging(project: Path, workdir: Path, port: int | None = None, bento_tag: str | None = None,
                serve: ServeParams | None = None, source_home: Path | None = None,
                ready_timeout_s: float = 180, tls: bool = False, https_port: int | None = None,
                keep_feedback: bool = False, archive: Path | None = None) -> Iterator[Staging]:
    """Build (unless `bento_tag`), export (unless `archive`, an exported `bento_tag`), import into `workdir`,
    serve behind nginx; stop both on exit.

    `source_home` is the BENTOML_HOME holding the model (default: the environment's). With `tls`, nginx serves
    HTTPS on `https_port` with a self-signed certificate and redirects HTTP to it, as on EC2 with --https.
    Like EC2, the service keeps no feedback unless `keep_feedback` (then in `workdir`/feedback).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if archive is not None and bento_tag is None:
        raise DeployError(f"staging {archive} needs the tag of the bento it holds")
    tag = bento_tag or build_bento(project, source_home)
    log.info("staging bento %s", tag)
    archive = archive or export_bento(tag, workdir / "export" / "bento.bento", source_home)
    home = workdir / "bentoml"
    import_bento(archive, home)

    service_port, public_port = free_port(), port or free_port()
    service_url, http_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{public_port}"
    feedback_dir = workdir / "feedback" if keep_feedback else None
    env = service_environment(home, feedback_dir)
    service_log, nginx_log = workdir / "bentoml-serve.log", workdir / "nginx" / "error.log"
    with ExitStack() as stack:
        service = stack.enter_context(_started(serve_command(bentoml_executable(), tag, service_port),
                                               service_log, env=env, cwd=Path(bento_source_dir(home, tag))))
        try:
            wait_until_ready(f"{service_url}/readyz", ready_timeout_s, 0.5,
                             alive=lambda: service.poll() is None, what="`bentoml serve`")
        except NotReady as err:
            raise DeployError(f"{err}\n--- {service_log} ---\n{_tail(service_log)}") from None
        certificate, url, site_tls = None, http_url, None
        if tls:
            https_port = https_port or free_port()
            certificate, key = self_signed_certificate(workdir / "nginx" / "tls")
            site_tls = TlsSettings(listen=f"127.0.0.1:{https_port}", certificate=str(certificate), key=str(key),
                                   acme_root=str(workdir / "nginx" / "acme"))
            url = f"https://127.0.0.1:{https_port}"
        site = SiteSettings.for_service(serve or ServeParams(), listen=f"127.0.0.1:{public_port}",
                                        upstream=f"127.0.0.1:{service_port}", tls=site_tls)
        config = write_nginx_config(workdir / "nginx", site)
        check_nginx_config(config)
        nginx = stack.enter_context(_started(
            [nginx_executable(), "-p", str(config.parent), "-c", str(config), "-e", str(nginx_log)],
            workdir / "nginx" / "stdout.log"))
        try:
            # /readyz answers on plain HTTP also with TLS (probes are not redirected).
            wait_until_ready(f"{http_url}/readyz", 30, 0.2, alive=lambda: nginx.poll() is None, what="nginx")
        except NotReady as err:
            raise DeployError(f"{err}\n--- {nginx_log} ---\n{_tail(nginx_log)}") from None
        yield Staging(url=url, http_url=http_url, service_url=service_url, bento_tag=tag, workdir=workdir,
                      certificate=certificate, feedback_dir=feedback_dir)
