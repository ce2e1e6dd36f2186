"""A production fleet on moto that answers HTTP, for the release tests.

moto (a ThreadedMotoServer in the test's process, reached by the `bbt` commands through AWS_ENDPOINT_URL) holds
the load balancer, the auto scaling group, its launch templates and instances, and the S3 archives. Its instances
run nothing, so an HTTP forward proxy (the commands' HTTP_PROXY) stands in for the load balancer's address: a
request to it is served by the bento that the instances registered in its target group were launched with, taken
from moto's S3 by their `bbt:archive` tag and run behind nginx (bbt.deploy.staging.run_staging) as an instance's
cloud-init runs it. So a roll-out's smoke test through the load balancer meets the version the fleet serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import pytest

from bbt.config import ServeParams
from bbt.deploy.aws import ARCHIVE_TAG, tag_value
from bbt.deploy.fleet import BENTO_TAG, find_fleets
from bbt.deploy.staging import run_staging
from bbt.serving.ready import free_port
from tests.unit.deploy.test_deploy import REGION, fake_aws_environment, moto_over_https, some_ami
from tests.unit.deploy.test_deploy_fleet import create_version_keeping_user_data

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "content-length", "host", "proxy-authorization"}


@dataclass
class Instances:
    """The bentos the fleet's instances were launched with, each served once behind nginx (by bento tag)."""

    session: boto3.Session
    workdir: Path
    serve: ServeParams
    stack: ExitStack = field(default_factory=ExitStack)
    urls: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def behind(self, host: str) -> str | None:
        """The URL of what the load balancer at `host` sends requests to: its registered, healthy instances'
        bento (they all serve the same one while a roll-out probes); None when it has none."""
        fleets = [f for f in find_fleets(self.session).values()
                  if f.load_balancer is not None and f.load_balancer["DNSName"] == host]
        if not fleets:
            return None
        elbv2, ec2 = self.session.client("elbv2"), self.session.client("ec2")
        health = elbv2.describe_target_health(TargetGroupArn=fleets[0].target_group_arn)["TargetHealthDescriptions"]
        healthy = sorted(d["Target"]["Id"] for d in health if d["TargetHealth"]["State"] == "healthy")
        if not healthy:
            return None
        tags = ec2.describe_instances(InstanceIds=healthy[:1])["Reservations"][0]["Instances"][0]["Tags"]
        return self.serving(tag_value(tags, BENTO_TAG), tag_value(tags, ARCHIVE_TAG))

    def serving(self, bento_tag: str, archive_uri: str) -> str:
        """Boot an instance of `bento_tag` from its archive in S3 (once), as cloud-init does; its URL."""
        with self.lock:
            if bento_tag not in self.urls:
                folder = self.workdir / bento_tag.replace(":", "-")
                folder.mkdir(parents=True)
                bucket, key = archive_uri.removeprefix("s3://").split("/", 1)
                archive = folder / "bento.bento"
                self.session.client("s3").download_file(bucket, key, str(archive))
                staging = self.stack.enter_context(run_staging(folder, folder / "instance", bento_tag=bento_tag,
                                                               archive=archive, serve=self.serve))
                self.urls[bento_tag] = staging.url
            return self.urls[bento_tag]


def proxy_handler(instances: Instances) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        """Requests in absolute form (`GET http://<load balancer>/path`), as an HTTP client sends them to its
        proxy; forwarded to the load balancer's instances."""

        def forward(self) -> None:
            target = urlsplit(self.path)
            backend = instances.behind(target.hostname or "")
            if backend is None:
                self.send_error(503, f"no healthy instance behind {target.hostname}")
                return
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            path = target.path + (f"?{target.query}" if target.query else "")
            answer = httpx.request(self.command, backend + path, headers=headers, content=body, timeout=120)
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                    self.send_header(key, value)
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Proxy


@dataclass(frozen=True)
class MotoFleetWorld:
    session: boto3.Session  # this process's client of the moto server
    env: dict[str, str]  # what a `bbt` command needs to reach it: endpoint, fake credentials, the proxy
    ami: str


@contextmanager
def moto_fleet_world(workdir: Path, serve: ServeParams) -> Iterator[MotoFleetWorld]:
    """A moto server and the load balancers' stand-in proxy, both stopped (with every instance) on exit."""
    from moto.ec2.models.launch_templates import LaunchTemplate
    from moto.s3.models import FakeBucket
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        fake_aws_environment(patch, workdir)
        patch.setattr(FakeBucket, "get_permission", moto_over_https(FakeBucket.get_permission))
        patch.setattr(LaunchTemplate, "create_version", create_version_keeping_user_data(LaunchTemplate.create_version))
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stack.callback(server.stop)
        endpoint = f"http://127.0.0.1:{port}"
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        session = boto3.Session(region_name=REGION)
        instances = Instances(session, workdir / "instances", serve)
        stack.enter_context(instances.stack)
        proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), proxy_handler(instances))
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        stack.callback(proxy.server_close)
        stack.callback(proxy.shutdown)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(workdir / "no-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-credentials"), "AWS_EC2_METADATA_DISABLED": "true",
               "HTTP_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}", "NO_PROXY": "127.0.0.1,localhost"}
        yield MotoFleetWorld(session, env, some_ami(session))
