"""`bbt deploy ec2|status|destroy` against moto's AWS; the readiness wait against a real local HTTP server."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws
from typer.testing import CliRunner

from bbt.cli import app
from bbt.config import load_params
from bbt.deploy import DeployError
from bbt.deploy.ec2 import TAG_KEY, Ec2Options, aws_session, deploy_ec2, destroy, find_deployments
from bbt.deploy.ready import wait_until_ready
from bbt.deploy.render import SiteSettings, client_max_body_size, render_site, render_unit, serve_command
from tests.conftest import free_port

REGION = "eu-west-1"
SSH_CIDR = "203.0.113.0/24"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and no AWS config files: nothing here can reach real AWS."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto's catalogue of thousands of public AMIs takes seconds to load; the tests register their own.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture
def aws(aws_env: None) -> Iterator[boto3.Session]:
    with mock_aws():
        yield aws_session()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "bbt-abc123.bento"
    path.write_bytes(b"exported bento stand-in " * 100)
    return path


def some_ami(session: boto3.Session) -> str:
    """A Debian-12-like image registered in moto's region."""
    ec2 = session.client("ec2")
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["debian-12-amd64"]}])["Images"]
    if images:
        return images[0]["ImageId"]
    return ec2.register_image(Name="debian-12-amd64", RootDeviceName="/dev/xvda", Architecture="x86_64",
                              VirtualizationType="hvm")["ImageId"]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def deploy(session: boto3.Session, archive: Path, **options: object) -> tuple[str, list[str]]:
    waited: list[str] = []
    deployment = deploy_ec2(archive, "bbt:abc123", "1.4.40", Ec2Options(ami=some_ami(session), **options),
                            session, wait_ready=lambda url, timeout: waited.append(url), echo=lambda _: None)
    return deployment.deployment_id, waited


def test_ec2_creates_tags_waits_and_destroys_exactly_its_resources(aws: boto3.Session, archive: Path) -> None:
    ec2, s3 = aws.client("ec2"), aws.client("s3")
    # Someone else's resources in the same account and region must survive `destroy`.
    other_group = ec2.create_security_group(GroupName="other", Description="not ours")["GroupId"]
    other_instance = ec2.run_instances(ImageId=some_ami(aws), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    s3.create_bucket(Bucket="bbt-not-ours", CreateBucketConfiguration={"LocationConstraint": REGION})
    ec2.create_key_pair(KeyName="me")

    deployment_id, waited = deploy(aws, archive, key_name="me", ssh_cidr=SSH_CIDR, instance_type="t3.medium")

    [instance] = [i for r in ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [deployment_id]}])
                  ["Reservations"] for i in r["Instances"]]
    assert instance["State"]["Name"] == "running"
    assert (instance["InstanceType"], instance["KeyName"]) == ("t3.medium", "me")
    assert tags_of(instance)["Name"] == deployment_id
    assert waited == [f"http://{instance['PublicIpAddress']}/readyz"]

    [group] = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in instance["SecurityGroups"]])[
        "SecurityGroups"]
    assert tags_of(group)[TAG_KEY] == deployment_id
    rules = {p["FromPort"]: [r["CidrIp"] for r in p["IpRanges"]] for p in group["IpPermissions"]}
    assert rules == {80: ["0.0.0.0/0"], 22: [SSH_CIDR]}, "443 stays closed without --https"

    volumes = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [deployment_id]}])["Volumes"]
    assert [v["Attachments"][0]["InstanceId"] for v in volumes] == [instance["InstanceId"]]

    bucket, key = tags_of(instance)["bbt:archive"].removeprefix("s3://").split("/", 1)
    assert bucket.startswith(deployment_id)
    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}[TAG_KEY] == deployment_id
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicPolicy"]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == archive.read_bytes()
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [{"Key": TAG_KEY, "Value": deployment_id}]

    encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(encoded["UserData"]["Value"]).decode()
    assert user_data.startswith("#cloud-config\n")
    script = next(f["content"] for f in yaml.safe_load(user_data)["write_files"]
                  if f["path"] == "/usr/local/sbin/bbt-setup")
    assert f"{bucket}" in script and key in script, "the instance downloads the uploaded archive"
    assert "bentoml import" in script and "bentoml==1.4.40" in script

    assert list(find_deployments(aws)) == [deployment_id]
    removed = destroy(aws, deployment_id)
    assert set(removed) == {instance["InstanceId"], group["GroupId"], f"s3://{bucket}"}
    state = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
    remaining_groups = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert group["GroupId"] not in remaining_groups and other_group in remaining_groups
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bbt-not-ours"]
    other = ec2.describe_instances(InstanceIds=[other_instance])["Reservations"][0]["Instances"][0]
    assert other["State"]["Name"] == "running"
    assert find_deployments(aws) == {}
    assert destroy(aws, deployment_id) == [], "a second destroy finds nothing left"


def test_ec2_into_an_existing_bucket_keeps_the_bucket_and_opens_https(aws: boto3.Session, archive: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="team-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="team-artifacts", Key="keep/me.txt", Body=b"x")

    deployment_id, _ = deploy(aws, archive, bucket="team-artifacts", https=True)

    [group_id] = find_deployments(aws)[deployment_id].security_groups
    group = aws.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert sorted(p["FromPort"] for p in group["IpPermissions"]) == [80, 443], "no SSH without --ssh-cidr"
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="team-artifacts")["Contents"]) == [
        f"bbt/{deployment_id}/{archive.name}", "keep/me.txt"]

    destroy(aws, deployment_id)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="team-artifacts")["Contents"]] == ["keep/me.txt"]


def test_a_missing_key_pair_is_refused_before_anything_is_created(aws: boto3.Session, archive: Path) -> None:
    with pytest.raises(DeployError, match="InvalidKeyPair.NotFound.*create it or drop --key-name"):
        deploy(aws, archive, key_name="missing")
    assert find_deployments(aws) == {}


def test_a_failed_upload_rolls_back_the_security_group(aws: boto3.Session, archive: Path) -> None:
    with pytest.raises(DeployError, match="uploading the bento to S3: .*NoSuchBucket.*check --bucket"):
        deploy(aws, archive, bucket="typo-bucket")
    assert find_deployments(aws) == {}
    assert aws.client("s3").list_buckets()["Buckets"] == []
    groups = aws.client("ec2").describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]


def test_the_default_ami_lookup_fails_clearly_when_the_region_has_none(aws: boto3.Session,
                                                                       archive: Path) -> None:
    with pytest.raises(DeployError, match="Debian 12 AMI.*pass --ami"):
        deploy_ec2(archive, "bbt:abc123", "1.4.40", Ec2Options(), aws, wait_ready=lambda u, t: None)
    assert find_deployments(aws) == {}


def test_missing_region_and_credentials_are_clear_errors(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(DeployError, match="no AWS region: pass --region"):
        aws_session()
    result = CliRunner().invoke(app, ["deploy", "status"])
    assert result.exit_code == 2 and "no AWS region" in result.output and "Traceback" not in result.output

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DeployError, match="no AWS credentials found: run `aws configure`"):
        aws_session(region=REGION)
    result = CliRunner().invoke(app, ["deploy", "ec2", "--region", REGION, "--bento", "bbt:abc"])
    assert result.exit_code == 2 and "no AWS credentials found" in result.output

    result = CliRunner().invoke(app, ["deploy", "destroy", "--profile", "nobody", "--yes"])
    assert result.exit_code == 2 and "AWS profile 'nobody'" in result.output


def test_status_and_destroy_commands(aws: boto3.Session, archive: Path) -> None:
    runner = CliRunner()
    assert "no bbt deployments" in runner.invoke(app, ["deploy", "status", "--no-probe"]).output
    deployment_id, waited = deploy(aws, archive)

    status = runner.invoke(app, ["deploy", "status", "--no-probe"])
    assert status.exit_code == 0, status.output
    assert deployment_id in status.output and "running" in status.output
    assert waited[0].removesuffix("readyz") in status.output

    refused = runner.invoke(app, ["deploy", "destroy", "bbt-19990101-000000-0000", "--yes"])
    assert refused.exit_code == 2 and "no resources tagged bbt:deployment=bbt-19990101" in refused.output
    removed = runner.invoke(app, ["deploy", "destroy", "--yes"])
    assert removed.exit_code == 0, removed.output
    assert f"removed {deployment_id}" in removed.output
    assert find_deployments(aws) == {}


class _Readiness(http.server.BaseHTTPRequestHandler):
    """Answers /readyz with 503 until `ready_after` requests were seen, then 200."""

    ready_after = 3
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        status = 200 if self.path == "/readyz" and self.seen > self.ready_after else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[tuple[str, type[_Readiness]]]:
    handler = type("Handler", (_Readiness,), {"seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def test_wait_until_ready_polls_until_the_server_answers_200(readiness_server) -> None:
    url, handler = readiness_server
    wait_until_ready(f"{url}/readyz", timeout_s=10, interval_s=0.05)
    assert handler.seen == handler.ready_after + 1


def test_wait_until_ready_times_out_naming_the_last_answer(readiness_server) -> None:
    url, handler = readiness_server
    handler.ready_after = 10**6
    started = time.monotonic()
    with pytest.raises(DeployError, match=r"did not answer 200 within 0.5 s \(last answer: 503\)"):
        wait_until_ready(f"{url}/readyz", timeout_s=0.5, interval_s=0.05)
    assert time.monotonic() - started < 5
    with pytest.raises(DeployError, match="last answer: no connection"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout_s=0.3, interval_s=0.05)


def test_wait_until_ready_stops_when_the_process_died(readiness_server) -> None:
    url, handler = readiness_server
    handler.ready_after = 10**6
    with pytest.raises(DeployError, match="nginx stopped before"):
        wait_until_ready(f"{url}/readyz", timeout_s=60, interval_s=0.05, alive=lambda: False, what="nginx")


@pytest.mark.parametrize(("max_upload_mb", "expected"), [(10, "10304k"), (2.5, "2624k"), (0.1, "167k")])
def test_nginx_body_limit_follows_the_service_limit(max_upload_mb: float, expected: str) -> None:
    assert client_max_body_size(max_upload_mb) == expected
    site = render_site(SiteSettings(max_upload_mb=max_upload_mb))
    assert f"client_max_body_size {expected};" in site
    assert f"at most {max_upload_mb:g} MB" in site


def test_systemd_unit_runs_the_staging_command_as_a_non_root_user_restarting_on_failure() -> None:
    unit = render_unit("bbt:abc123")
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["User"] == "bbt" and lines["Restart"] == "on-failure"
    assert lines["ExecStart"] == " ".join(serve_command("/var/lib/bbt/venv/bin/bentoml", "bbt:abc123", 3000))
    assert lines["WantedBy"] == "multi-user.target"
    assert lines["WorkingDirectory"] == "/var/lib/bbt/bentoml/bentos/bbt/abc123/src", "where params.yaml is"


def test_render_command_writes_what_ec2_would_send(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "render", str(tmp_path), "--bento", "bbt-actor-service:abc"])
    assert result.exit_code == 0, result.output
    limit = client_max_body_size(load_params().serve.max_upload_mb)
    assert f"client_max_body_size {limit};" in (tmp_path / "bbt.conf").read_text()
    assert "serve bbt-actor-service:abc" in (tmp_path / "bbt.service").read_text()
    assert yaml.safe_load((tmp_path / "user-data.yaml").read_text())["packages"]
