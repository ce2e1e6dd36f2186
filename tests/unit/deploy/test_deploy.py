"""`bbt deploy ec2|status|destroy` against moto's AWS; the readiness wait against a real local HTTP server."""

from __future__ import annotations

import base64
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import yaml
from moto import mock_aws
from typer.testing import CliRunner

from bbt.cli import app
from bbt.config import ServeParams, load_params
from bbt.deploy import DeployError
from bbt.deploy.ec2 import (
    PROFILE_RETRIES,
    TAG_KEY,
    Ec2Options,
    aws_session,
    deploy_ec2,
    destroy,
    find_deployments,
    launch_instance,
)
from bbt.deploy.instances import MemoryLimits
from bbt.deploy.render import (
    SiteSettings,
    TlsSettings,
    client_max_body_size,
    render_site,
    render_unit,
    serve_command,
)
from bbt.serving.ready import NotReady, free_port, wait_until_ready

REGION = "eu-west-1"
SSH_CIDR = "203.0.113.0/24"


def fake_aws_environment(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """Fake credentials and no AWS config files: nothing here can reach real AWS."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        patch.delenv(name, raising=False)
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_DEFAULT_REGION", REGION)
    patch.setenv("AWS_CONFIG_FILE", str(folder / "no-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-credentials"))
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto's catalogue of thousands of public AMIs takes seconds to load; the tests register their own.
    patch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_aws_environment(monkeypatch, tmp_path)


def moto_over_https(get_permission):
    """moto ignores policy conditions, so a TLS-only Deny would refuse everything; boto3 speaks HTTPS, so for
    its requests aws:SecureTransport is true and that statement never applies: drop it before moto evaluates."""

    def permission(bucket, action: str, resource: str):
        if bucket.policy is None:
            return get_permission(bucket, action, resource)
        policy = json.loads(bucket.policy)
        kept = [s for s in policy["Statement"] if s.get("Condition") != {"Bool": {"aws:SecureTransport": "false"}}]
        saved, bucket.policy = bucket.policy, json.dumps({**policy, "Statement": kept}).encode() if kept else None
        try:
            return get_permission(bucket, action, resource)
        finally:
            bucket.policy = saved

    return permission


@pytest.fixture
def aws(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    from moto.s3.models import FakeBucket

    monkeypatch.setattr(FakeBucket, "get_permission", moto_over_https(FakeBucket.get_permission))
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
    # IAM is global: a deployment of another region keeps its role.
    iam = aws.client("iam")
    iam.create_role(RoleName="bbt-elsewhere", Path="/bbt/", AssumeRolePolicyDocument="{}",
                    Tags=[{"Key": TAG_KEY, "Value": "bbt-elsewhere"}, {"Key": "bbt:region", "Value": "us-east-1"}])

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
    assert [v["Encrypted"] for v in volumes] == [True]

    bucket, key = tags_of(instance)["bbt:archive"].removeprefix("s3://").split("/", 1)
    assert bucket.startswith(deployment_id)
    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}[TAG_KEY] == deployment_id
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    [statement] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(statement["Resource"]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == archive.read_bytes()
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [{"Key": TAG_KEY, "Value": deployment_id}]

    encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(encoded["UserData"]["Value"]).decode()
    assert user_data.startswith("#cloud-config\n")
    script = next(f["content"] for f in yaml.safe_load(user_data)["write_files"]
                  if f["path"] == "/usr/local/sbin/bbt-setup")
    assert f"{bucket}" in script and key in script, "the instance downloads the uploaded archive"
    assert "bentoml import" in script and "bentoml==1.4.40" in script
    # ... with its instance role, which may read that one object and nothing else.
    assert instance["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/bbt/{deployment_id}")
    [role] = iam.get_instance_profile(InstanceProfileName=deployment_id)["InstanceProfile"]["Roles"]
    assert json.dumps(role["AssumeRolePolicyDocument"]).count("ec2.amazonaws.com") == 1
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["read-archive"]
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="read-archive")["PolicyDocument"]
    assert policy["Statement"] == [{"Effect": "Allow", "Action": "s3:GetObject",
                                    "Resource": f"arn:aws:s3:::{bucket}/{key}"}]
    unit = next(f["content"] for f in yaml.safe_load(user_data)["write_files"]
                if f["path"] == "/etc/systemd/system/bbt.service")
    assert "MemoryMax=3481M" in unit, "85% of the t3.medium's 4 GiB"

    assert list(find_deployments(aws)) == [deployment_id]
    removed = destroy(aws, deployment_id)
    assert set(removed) == {instance["InstanceId"], group["GroupId"], f"s3://{bucket}", f"IAM role {deployment_id}"}
    assert [r["RoleName"] for r in iam.list_roles(PathPrefix="/bbt/")["Roles"]] == ["bbt-elsewhere"]
    assert iam.list_instance_profiles(PathPrefix="/bbt/")["InstanceProfiles"] == []
    state = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
    remaining_groups = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert group["GroupId"] not in remaining_groups and other_group in remaining_groups
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bbt-not-ours"]
    other = ec2.describe_instances(InstanceIds=[other_instance])["Reservations"][0]["Instances"][0]
    assert other["State"]["Name"] == "running"
    assert find_deployments(aws) == {}
    assert destroy(aws, deployment_id) == [], "a second destroy finds nothing left"


def user_data_of(session: boto3.Session, deployment_id: str) -> str:
    [instance] = find_deployments(session)[deployment_id].instances
    encoded = session.client("ec2").describe_instance_attribute(InstanceId=instance["InstanceId"],
                                                                Attribute="userData")
    return base64.b64decode(encoded["UserData"]["Value"]).decode()


def test_ec2_into_an_existing_bucket_keeps_the_bucket_and_serves_https(aws: boto3.Session, archive: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="team-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="team-artifacts", Key="keep/me.txt", Body=b"x")

    deployment_id, waited = deploy(aws, archive, bucket="team-artifacts", https=True, domain="bbt.example.org")

    deployment = find_deployments(aws)[deployment_id]
    [group_id] = deployment.security_groups
    group = aws.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert sorted(p["FromPort"] for p in group["IpPermissions"]) == [80, 443], "no SSH without --ssh-cidr"
    assert deployment.public_url == "https://bbt.example.org/"
    assert waited == [f"{deployment.url}readyz"], "the readiness wait uses plain HTTP, where probes answer"
    config = yaml.safe_load(user_data_of(aws, deployment_id))
    assert {"certbot", "openssl"} <= set(config["packages"])
    files = {f["path"]: f["content"] for f in config["write_files"]}
    assert "listen 443 ssl http2 default_server;" in files["/etc/nginx/sites-available/bbt.conf"]
    assert "return 301 https://bbt.example.org$request_uri;" in files["/etc/nginx/sites-available/bbt.conf"]
    assert "certbot certonly --webroot" in files["/usr/local/sbin/bbt-certificate"]
    assert "-d bbt.example.org" in files["/usr/local/sbin/bbt-certificate"]
    assert "enable --now bbt-certificate.timer" in files["/usr/local/sbin/bbt-setup"]
    # A bucket bbt did not create keeps its own settings.
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchBucketPolicy"):
        s3.get_bucket_policy(Bucket="team-artifacts")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="team-artifacts")["Contents"]) == [
        f"bbt/{deployment_id}/{archive.name}", "keep/me.txt"]

    destroy(aws, deployment_id)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="team-artifacts")["Contents"]] == ["keep/me.txt"]


def test_user_data_carries_no_credentials(aws_env: None, monkeypatch: pytest.MonkeyPatch, archive: Path) -> None:
    """Anything on the instance can read its user-data (IMDS): no keys, secrets, session tokens or signed URLs."""
    key_id, secret, token = "AKIAZ7EXAMPLEKEY0001", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY01", "FwoGZXIvYXdzEXAMPLE"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    from moto.s3.models import FakeBucket

    monkeypatch.setattr(FakeBucket, "get_permission", moto_over_https(FakeBucket.get_permission))
    with mock_aws():
        session = aws_session()
        deployment_id, _ = deploy(session, archive, https=True, domain="bbt.example.org")
        user_data = user_data_of(session, deployment_id)
    assert "bentoml import" in user_data
    for leak in (key_id, secret, token):
        assert leak not in user_data
    for pattern in (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"(?i)aws_secret_access_key", r"(?i)aws_session_token",
                    r"X-Amz-(Credential|Signature|Security-Token)", r"AWSAccessKeyId"):
        assert not re.search(pattern, user_data), pattern


def test_https_needs_a_domain_name_and_says_so() -> None:
    with pytest.raises(DeployError, match="--https needs --domain NAME"):
        Ec2Options(https=True)
    with pytest.raises(DeployError, match="add --https"):
        Ec2Options(domain="bbt.example.org")
    with pytest.raises(DeployError, match="not a domain name: give the bare name"):
        Ec2Options(https=True, domain="https://bbt.example.org/")
    result = CliRunner().invoke(app, ["deploy", "ec2", "--https", "--bento", "bbt:abc", "--region", REGION])
    assert result.exit_code == 2 and "--https needs --domain" in result.output and "Traceback" not in result.output


def test_the_units_memory_limits_follow_the_instance_type(aws: boto3.Session, archive: Path) -> None:
    """85% of the RAM for the service: from the table for the usual types, from AWS for any other."""
    assert "MemoryMax=3481M" in render_unit("bbt:abc"), "t3.medium, the default: 4 GiB"
    deployment_id, _ = deploy(aws, archive, instance_type="m5.large")
    unit = user_data_of(aws, deployment_id)
    assert "MemoryMax=6963M" in unit and "MemoryHigh=6614M" in unit, "8 GiB, looked up with DescribeInstanceTypes"
    deployment_id, _ = deploy(aws, archive, memory_max_mib=1500)
    assert "MemoryMax=1500M" in user_data_of(aws, deployment_id)
    before = find_deployments(aws)
    with pytest.raises(DeployError, match="looking up instance type t3.huge: InvalidInstanceType.*describe-instance"):
        deploy(aws, archive, instance_type="t3.huge")
    assert find_deployments(aws).keys() == before.keys(), "refused before anything was created"


class _NewProfileEc2:
    """run_instances refuses a just-created instance profile `refusals` times, as EC2 does while IAM propagates."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.calls = refusals, 0

    def run_instances(self, **request: object) -> dict:
        self.calls += 1
        if self.calls <= self.refusals:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InvalidParameterValue",
                           "Message": "Value (bbt-x) for parameter iamInstanceProfile.name is invalid."}}, "RunInstances")
        return {"Instances": [{"InstanceId": "i-0123"}]}


def test_launch_waits_for_a_new_instance_profile_to_be_usable() -> None:
    image, options, naps = {"ImageId": "ami-1"}, Ec2Options(), []
    ec2 = _NewProfileEc2(refusals=3)
    assert launch_instance(ec2, "bbt-x", image, "sg-1", "#cloud-config", options, "s3://b/k", "bbt-x",
                           sleep=naps.append) == "i-0123"
    assert ec2.calls == 4 and len(naps) == 3
    with pytest.raises(botocore.exceptions.ClientError, match="iamInstanceProfile"):
        launch_instance(_NewProfileEc2(refusals=PROFILE_RETRIES), "bbt-x", image, "sg-1", "", options, "s3://b/k",
                        "bbt-x", sleep=naps.append)


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
    with pytest.raises(NotReady, match=r"did not answer 200 within 0.5 s \(last answer: 503\)"):
        wait_until_ready(f"{url}/readyz", timeout_s=0.5, interval_s=0.05)
    assert time.monotonic() - started < 5
    with pytest.raises(NotReady, match="last answer: no connection"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout_s=0.3, interval_s=0.05)


def test_wait_until_ready_stops_when_the_process_died(readiness_server) -> None:
    url, handler = readiness_server
    handler.ready_after = 10**6
    with pytest.raises(NotReady, match="nginx stopped before"):
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


def test_systemd_rates_the_unit_ok_or_better(tmp_path: Path) -> None:
    """`systemd-analyze security` on the unit as shipped: 8.5 EXPOSED before hardening, now 1.1 OK."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make system-deps` installs systemd"
    unit = tmp_path / "bbt.service"
    unit.write_text(render_unit("bbt-actor-service:abc123"))
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for bbt\.service: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure, rating = float(found.group(1)), found.group(2)
    assert rating in {"SAFE", "OK"} and exposure <= 4.9, result.stdout
    assert exposure <= 1.5, f"the unit got weaker ({exposure}): see which line is now marked in\n{result.stdout}"


def test_the_unit_bounds_memory_tasks_and_privileges() -> None:
    lines = dict(line.split("=", 1) for line in render_unit("bbt:abc", memory=MemoryLimits.of_max(3000)).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert (lines["MemoryMax"], lines["MemoryHigh"], lines["OOMPolicy"]) == ("3000M", "2850M", "stop")
    assert int(lines["TasksMax"]) >= 64
    assert (lines["ProtectSystem"], lines["ReadWritePaths"]) == ("strict", "/var/lib/bbt"), "BENTOML_HOME is in it"
    assert lines["CapabilityBoundingSet"] == "" and lines["NoNewPrivileges"] == "true"
    assert set(lines["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}


def proxy_timeouts(site: str) -> tuple[int, int]:
    return (int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1)),
            int(re.search(r"proxy_send_timeout (\d+)s;", site).group(1)))


@pytest.mark.parametrize("timeout_s", [30, 7.5, 120])
def test_nginx_waits_longer_than_the_service(timeout_s: float) -> None:
    """The service answers its own JSON 504 after serve.timeout_s; nginx must still be listening then."""
    site = render_site(SiteSettings.for_service(ServeParams(timeout_s=timeout_s)))
    read, send = proxy_timeouts(site)
    assert read == send >= timeout_s + 10
    assert f"within {read} s" in site, "nginx's own 504 says how long it waited"


def test_the_shipped_site_follows_params_yaml() -> None:
    serve = load_params().serve
    read, _ = proxy_timeouts(render_site(SiteSettings.for_service(serve)))
    assert read > serve.timeout_s


def test_the_site_limits_clients_and_keeps_metrics_on_the_host() -> None:
    site = render_site(SiteSettings())
    zones = [line for line in site.splitlines() if line.startswith("limit_")]
    assert any(re.fullmatch(r"limit_req_zone \$binary_remote_addr zone=bbt_photos:10m rate=\d+r/s;", z) for z in zones)
    assert "limit_conn_zone $binary_remote_addr zone=bbt_connections:10m;" in zones
    assert "limit_req_status 429;" in site and "limit_conn_status 429;" in site
    for status in (413, 429, 502, 504, 404):
        body = re.search(rf"return {status} '(.*)\\n';", site)
        assert body and "error" in json.loads(body.group(1)), status
    assert "location ^~ /metrics {" in site
    assert "ssl" not in site and "Strict-Transport-Security" not in site and "301" not in site


def test_the_https_site_redirects_plain_http_except_challenges_and_probes() -> None:
    site = render_site(SiteSettings(server_name="bbt.example.org", tls=TlsSettings()))
    http, https = site.split("\nserver {")[1:]
    assert "listen 80 default_server;" in http and "return 301 https://bbt.example.org$request_uri;" in http
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/letsencrypt;" in http
    assert "location = /readyz" in http and "location = /classify" not in http
    assert "listen 443 ssl http2 default_server;" in https and "ssl_protocols TLSv1.2 TLSv1.3;" in https
    assert "ssl_certificate /etc/bbt/tls/fullchain.pem;" in https
    assert https.count("Strict-Transport-Security") == 3, "on every answer, including the JSON 429 and 502"
    staging = render_site(SiteSettings(listen="127.0.0.1:8080", tls=TlsSettings(listen="127.0.0.1:8443")))
    assert "return 301 https://$host:8443$request_uri;" in staging


def test_render_command_writes_what_ec2_would_send(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "render", str(tmp_path), "--bento", "bbt-actor-service:abc"])
    assert result.exit_code == 0, result.output
    limit = client_max_body_size(load_params().serve.max_upload_mb)
    assert f"client_max_body_size {limit};" in (tmp_path / "bbt.conf").read_text()
    assert "serve bbt-actor-service:abc" in (tmp_path / "bbt.service").read_text()
    assert yaml.safe_load((tmp_path / "user-data.yaml").read_text())["packages"]
    result = CliRunner().invoke(app, ["deploy", "render", str(tmp_path), "--https", "--domain", "bbt.example.org",
                                      "--instance-type", "t3.medium"])
    assert result.exit_code == 0, result.output
    assert "ssl_certificate" in (tmp_path / "bbt.conf").read_text()
    assert "MemoryMax=3481M" in (tmp_path / "bbt.service").read_text()
    assert "certbot" in yaml.safe_load((tmp_path / "user-data.yaml").read_text())["packages"]
