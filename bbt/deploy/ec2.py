"""Ship an exported bento to one EC2 instance behind nginx, list what runs, and remove exactly what was made.

Everything created carries the tag `bbt:deployment=<id>`: `status` and `destroy` find resources by that tag,
never by name patterns alone, so nothing else in the account is touched.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3
import boto3.exceptions
import botocore.exceptions

from bbt.deploy import DeployError
from bbt.deploy.ready import wait_until_ready
from bbt.deploy.render import SiteSettings, render_user_data

log = logging.getLogger(__name__)

TAG_KEY = "bbt:deployment"
ARCHIVE_TAG = "bbt:archive"
# Debian 12 matches this machine: Python 3.11 (the bento's interpreter) and the nginx the staging test runs.
DEFAULT_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
DEFAULT_INSTANCE_TYPE = "t3.small"
ROOT_VOLUME_GB = 16
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# What a user can do about the AWS errors they are most likely to meet.
HINTS = {
    "AuthFailure": "the credentials are invalid: check `aws sts get-caller-identity`",
    "InvalidClientTokenId": "the access key is unknown: check `aws sts get-caller-identity`",
    "ExpiredToken": "the session token expired: log in again (`aws sso login` or new keys)",
    "UnauthorizedOperation": "the IAM user/role lacks EC2 permissions (ec2:RunInstances, security groups, tags)",
    "AccessDenied": "the IAM user/role lacks the S3/EC2 permission named above",
    "InstanceLimitExceeded": "the region's instance quota is used up: terminate instances or request more",
    "VcpuLimitExceeded": "the region's vCPU quota is used up: pick a smaller --instance-type or request more",
    "InvalidKeyPair.NotFound": "no key pair of that name in this region: create it or drop --key-name",
    "InvalidAMIID.NotFound": "no such AMI in this region: AMI ids differ per region; drop --ami for Debian 12",
    "InvalidAMIID.Malformed": "the --ami value is not an AMI id (ami-...)",
    "BucketAlreadyExists": "that bucket name belongs to another account: pick another --bucket",
    "InsufficientInstanceCapacity": "AWS has no capacity for that type now: try another --instance-type",
}


@dataclass(frozen=True)
class Ec2Options:
    """What `bbt deploy ec2` may be told; every field has a sensible default."""

    region: str | None = None
    profile: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami: str | None = None
    key_name: str | None = None
    ssh_cidr: str | None = None
    https: bool = False
    bucket: str | None = None
    subnet_id: str | None = None
    volume_gb: int = ROOT_VOLUME_GB
    url_expiry_s: int = 12 * 3600
    max_upload_mb: float = 10
    ready_timeout_s: float = 1200


@dataclass
class Deployment:
    """The resources of one deployment, as found by their tags."""

    deployment_id: str
    instances: list[dict] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)

    @property
    def public_ip(self) -> str | None:
        running = [i for i in self.instances if i.get("PublicIpAddress")]
        return running[0]["PublicIpAddress"] if running else None

    @property
    def url(self) -> str | None:
        return f"http://{self.public_ip}/" if self.public_ip else None

    @property
    def state(self) -> str:
        return ",".join(i["State"]["Name"] for i in self.instances) or "no instance"


def aws_session(region: str | None = None, profile: str | None = None) -> boto3.Session:
    """A boto3 session with a region and credentials, or a DeployError saying how to provide them."""
    try:
        session = boto3.Session(region_name=region, profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise DeployError(f"AWS profile {profile!r} is not in ~/.aws/config or ~/.aws/credentials: "
                          "create it with `aws configure --profile NAME` or drop --profile") from None
    if not session.region_name:
        raise DeployError("no AWS region: pass --region (e.g. --region eu-west-1), or set AWS_REGION / "
                          "AWS_DEFAULT_REGION, or `region` in ~/.aws/config")
    if session.get_credentials() is None:
        raise DeployError("no AWS credentials found: run `aws configure` (or `aws sso login`), or set "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / --profile")
    return session


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn the AWS errors a user can fix into one clear DeployError line."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise DeployError(f"{action}: no AWS credentials found: run `aws configure` or set "
                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        message = err.response.get("Error", {}).get("Message", str(err))
        hint = next((h for c, h in HINTS.items() if code.startswith(c)), "")
        raise DeployError(f"{action}: {code}: {message}" + (f" ({hint})" if hint else "")) from None
    except boto3.exceptions.S3UploadFailedError as err:
        code = next((c for c in HINTS if c in str(err)), "")
        hint = HINTS.get(code) or ("that bucket does not exist: check --bucket and --region" if "NoSuchBucket"
                                   in str(err) else "")
        raise DeployError(f"{action}: {err}" + (f" ({hint})" if hint else "")) from None
    except botocore.exceptions.EndpointConnectionError as err:
        raise DeployError(f"{action}: cannot reach AWS ({err}); check the network and --region") from None


def new_deployment_id() -> str:
    return f"bbt-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _tags(deployment_id: str, **extra: str) -> list[dict[str, str]]:
    return [{"Key": "Name", "Value": deployment_id}, {"Key": TAG_KEY, "Value": deployment_id},
            *({"Key": k, "Value": v} for k, v in extra.items())]


def resolve_ami(session: boto3.Session, ami: str | None) -> dict:
    """The image to launch: --ami, or the latest Debian 12 published in the region's SSM parameters."""
    if ami is None:
        try:
            ami = session.client("ssm").get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
        except botocore.exceptions.ClientError as err:
            raise DeployError(f"could not look up the Debian 12 AMI ({DEFAULT_AMI_PARAMETER}) in "
                              f"{session.region_name}: {err.response['Error'].get('Code')}; pass --ami ami-... "
                              "(a Debian 12 amd64 image of that region)") from None
    with aws_errors(f"looking up AMI {ami}"):
        images = session.client("ec2").describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise DeployError(f"AMI {ami} does not exist in {session.region_name}: AMI ids differ per region")
    return images[0]


def _vpc_of(ec2, subnet_id: str | None) -> str:
    if subnet_id:
        subnets = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        return subnets[0]["VpcId"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise DeployError("this region has no default VPC: pass --subnet-id of a public subnet")
    return vpcs[0]["VpcId"]


def create_security_group(ec2, deployment_id: str, vpc_id: str, options: Ec2Options) -> str:
    """A security group open on 80 (and 443 with --https) to all, and on 22 only from --ssh-cidr."""
    group_id = ec2.create_security_group(
        GroupName=deployment_id, Description=f"bbt deployment {deployment_id}: HTTP in, SSH from one CIDR",
        VpcId=vpc_id, TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(deployment_id)}],
    )["GroupId"]
    public = {"IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    rules = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, **public}]
    if options.https:
        rules.append({"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, **public})
    if options.ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": options.ssh_cidr, "Description": "SSH for maintenance"}]})
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
    return group_id


def upload_archive(session: boto3.Session, deployment_id: str, archive: Path, bucket: str | None,
                   expiry_s: int) -> tuple[str, str, bool, str]:
    """Put the exported bento in S3 (a new private bucket unless --bucket); returns bucket, key, created, URL."""
    s3 = session.client("s3")
    created = bucket is None
    if bucket is None:
        account = session.client("sts").get_caller_identity()["Account"]
        bucket = f"{deployment_id}-{account}"
        location = {} if session.region_name == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": session.region_name}}
        s3.create_bucket(Bucket=bucket, **location)
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tags(deployment_id)})
    key = f"bbt/{deployment_id}/{archive.name}"
    s3.upload_file(str(archive), bucket, key, ExtraArgs={"Tagging": f"{TAG_KEY}={deployment_id}"})
    # A time-limited link lets the instance download without an IAM role; it expires after setup.
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry_s)
    return bucket, key, created, url


def launch_instance(ec2, deployment_id: str, image: dict, group_id: str, user_data: str,
                    options: Ec2Options, archive_uri: str) -> str:
    """One instance from the image, with the user-data, the group, tags on it and its volume."""
    instance_tags = _tags(deployment_id, **{ARCHIVE_TAG: archive_uri})
    request = {
        "ImageId": image["ImageId"], "InstanceType": options.instance_type, "MinCount": 1, "MaxCount": 1,
        "UserData": user_data, "SecurityGroupIds": [group_id],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName", "/dev/xvda"),
                              "Ebs": {"VolumeSize": options.volume_gb, "VolumeType": "gp3",
                                      "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": instance_tags},
                           {"ResourceType": "volume", "Tags": _tags(deployment_id)}],
    }
    if options.key_name:
        request["KeyName"] = options.key_name
    if options.subnet_id:
        request["SubnetId"] = options.subnet_id
    return ec2.run_instances(**request)["Instances"][0]["InstanceId"]


def deploy_ec2(archive: Path, bento_tag: str, bentoml_version: str, options: Ec2Options,
               session: boto3.Session | None = None,
               wait_ready: Callable[[str, float], None] | None = None,
               echo: Callable[[str], None] = log.info) -> Deployment:
    """Create the security group, upload the archive, launch the instance, wait for /readyz through nginx.

    If a step before the instance is running fails, whatever was created is removed again.
    `wait_ready(url, timeout_s)` defaults to polling the public /readyz.
    """
    session = session or aws_session(options.region, options.profile)
    wait_ready = wait_ready or (lambda url, timeout: wait_until_ready(url, timeout, 10, what="the instance"))
    if not archive.is_file():
        raise DeployError(f"{archive} is not a file: export a bento first (`bentoml export TAG PATH`)")
    deployment_id = new_deployment_id()
    ec2 = session.client("ec2")
    echo(f"deployment {deployment_id} in {session.region_name}")
    image = resolve_ami(session, options.ami)
    if options.key_name:
        with aws_errors(f"looking up key pair {options.key_name!r}"):
            ec2.describe_key_pairs(KeyNames=[options.key_name])
    try:
        with aws_errors("creating the security group"):
            group_id = create_security_group(ec2, deployment_id, _vpc_of(ec2, options.subnet_id), options)
        echo(f"security group {group_id}: port 80" + (", 443" if options.https else "")
             + (f", SSH from {options.ssh_cidr}" if options.ssh_cidr else ""))
        with aws_errors("uploading the bento to S3"):
            bucket, key, _, url = upload_archive(session, deployment_id, archive, options.bucket,
                                                 options.url_expiry_s)
            # The group outlives the instance; it remembers where the archive is for `destroy`.
            ec2.create_tags(Resources=[group_id], Tags=[{"Key": ARCHIVE_TAG, "Value": f"s3://{bucket}/{key}"}])
        echo(f"bento {bento_tag} uploaded to s3://{bucket}/{key}")
        user_data = render_user_data(deployment_id, bento_tag, url, bentoml_version,
                                     SiteSettings(max_upload_mb=options.max_upload_mb, tls=False))
        with aws_errors("launching the instance"):
            instance_id = launch_instance(ec2, deployment_id, image, group_id, user_data, options,
                                          f"s3://{bucket}/{key}")
            echo(f"instance {instance_id} ({options.instance_type}, {image['ImageId']}) starting")
            ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id],
                                                    WaiterConfig={"Delay": 5, "MaxAttempts": 60})
    except BaseException:
        _roll_back(session, deployment_id, echo)
        raise
    deployment = find_deployments(session, deployment_id)[deployment_id]
    if deployment.url is None:
        raise DeployError(f"instance {instance_id} has no public address: use a public subnet (--subnet-id) "
                          f"that assigns public IPs; remove it with `bbt deploy destroy {deployment_id}`")
    echo(f"waiting for {deployment.url}readyz (cloud-init installs Python, the bento and nginx: ~5-10 min)")
    try:
        wait_ready(f"{deployment.url}readyz", options.ready_timeout_s)
    except DeployError as err:
        raise DeployError(f"{err}; the instance keeps running (and costing): look at /var/log/cloud-init-output.log "
                          f"over SSH, or remove it with `bbt deploy destroy {deployment_id}`") from None
    echo(f"ready: {deployment.url}")
    return deployment


def _roll_back(session: boto3.Session, deployment_id: str, echo: Callable[[str], None]) -> None:
    try:
        removed = destroy(session, deployment_id)
    except DeployError as err:
        echo(f"could not roll back {deployment_id} ({err}): run `bbt deploy destroy {deployment_id}`")
        return
    if removed:
        echo(f"rolled back {deployment_id}: removed {', '.join(removed)}")


def find_deployments(session: boto3.Session, deployment_id: str | None = None) -> dict[str, Deployment]:
    """Every bbt deployment in the region (or just one), by the `bbt:deployment` tag on its resources."""
    ec2, s3 = session.client("ec2"), session.client("s3")
    tag_filter = ({"Name": f"tag:{TAG_KEY}", "Values": [deployment_id]} if deployment_id
                  else {"Name": "tag-key", "Values": [TAG_KEY]})
    found: dict[str, Deployment] = {}

    def entry(tags: list[dict[str, str]]) -> Deployment:
        values = {t["Key"]: t["Value"] for t in tags}
        deployment = found.setdefault(values[TAG_KEY], Deployment(values[TAG_KEY]))
        if ARCHIVE_TAG in values and values[ARCHIVE_TAG] not in deployment.archives:
            deployment.archives.append(values[ARCHIVE_TAG])
        return deployment

    with aws_errors("listing deployments"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[tag_filter, {"Name": "instance-state-name", "Values": LIVE_STATES}])
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    entry(instance["Tags"]).instances.append(instance)
        for group in ec2.describe_security_groups(Filters=[tag_filter])["SecurityGroups"]:
            entry(group["Tags"]).security_groups.append(group["GroupId"])
        for bucket in s3.list_buckets()["Buckets"]:
            name = bucket["Name"]
            if not name.startswith("bbt-") or (deployment_id and not name.startswith(deployment_id)):
                continue
            try:
                tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
            except botocore.exceptions.ClientError:
                continue
            if any(t["Key"] == TAG_KEY and (deployment_id is None or t["Value"] == deployment_id) for t in tags):
                entry(tags).buckets.append(name)
    return found


def _delete_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
    s3.delete_bucket(Bucket=bucket)


def destroy(session: boto3.Session, deployment_id: str) -> list[str]:
    """Terminate the instance, delete the security group, the archive and the bucket if bbt created it."""
    deployment = find_deployments(session, deployment_id).get(deployment_id)
    if deployment is None:
        return []
    ec2, s3 = session.client("ec2"), session.client("s3")
    removed: list[str] = []
    with aws_errors(f"destroying {deployment_id}"):
        for uri in deployment.archives:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            if bucket not in deployment.buckets:
                s3.delete_object(Bucket=bucket, Key=key)
                removed.append(uri)
        for bucket in deployment.buckets:
            _delete_bucket(s3, bucket)
            removed.append(f"s3://{bucket}")
        instance_ids = [i["InstanceId"] for i in deployment.instances]
        if instance_ids:
            ec2.terminate_instances(InstanceIds=instance_ids)
            # The group stays in use until its instance is gone.
            ec2.get_waiter("instance_terminated").wait(InstanceIds=instance_ids,
                                                       WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            removed.extend(instance_ids)
        for group_id in deployment.security_groups:
            ec2.delete_security_group(GroupId=group_id)
            removed.append(group_id)
    return removed
