"""Ship an exported bento to one EC2 instance behind nginx, list what runs, and remove exactly what was made.

Everything created carries the tag `bbt:deployment=<id>`: `status` and `destroy` find resources by that tag,
never by name patterns alone, so nothing else in the account is touched.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3
import botocore.exceptions

from bbt.config import ServeParams
from bbt.deploy import DeployError
from bbt.deploy.aws import ARCHIVE_TAG, TAG_KEY, aws_errors, aws_session, error_code, tag_value, tags
from bbt.deploy.fleet import destroy_fleet, find_fleets, template_versions
from bbt.deploy.iam import create_instance_role, delete_instance_role, find_roles
from bbt.deploy.instances import DEFAULT_INSTANCE_TYPE, INSTANCE_MEMORY_MIB, MemoryLimits
from bbt.deploy.render import Archive, SiteSettings, TlsSettings, render_user_data
from bbt.deploy.s3 import delete_bucket, ship_archive
from bbt.serving.ready import NotReady, wait_until_ready

__all__ = ["TAG_KEY", "Deployment", "Ec2Options", "aws_session", "deploy_ec2", "destroy", "find_deployments"]

log = logging.getLogger(__name__)

DOMAIN_TAG = "bbt:domain"
# Debian 12 matches this machine: Python 3.11 (the bento's interpreter) and the nginx the staging test runs.
DEFAULT_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
ROOT_VOLUME_GB = 16
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# A new instance profile takes seconds to be usable by EC2 (IAM is eventually consistent): retry that long.
PROFILE_RETRIES, PROFILE_RETRY_S = 12, 5.0


@dataclass(frozen=True)
class Ec2Options:
    """What `bbt deploy ec2` may be told; every field has a sensible default.

    `memory_max_mib` overrides the unit's MemoryMax (default: 85% of the instance type's RAM).
    """

    region: str | None = None
    profile: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami: str | None = None
    key_name: str | None = None
    ssh_cidr: str | None = None
    https: bool = False
    domain: str | None = None
    bucket: str | None = None
    subnet_id: str | None = None
    volume_gb: int = ROOT_VOLUME_GB
    serve: ServeParams = field(default_factory=ServeParams)
    memory_max_mib: int | None = None
    ready_timeout_s: float = 1200
    keep_feedback: bool = False  # the service keeps the photos users report wrong (off on a public server)

    def __post_init__(self) -> None:
        if self.https and not self.domain:
            raise DeployError("--https needs --domain NAME (e.g. --domain bbt.example.org): Let's Encrypt "
                              "certifies a domain name, not an IP address; point its DNS A record at the instance")
        if self.domain and not self.https:
            raise DeployError(f"--domain {self.domain} is for the HTTPS certificate: add --https")
        if self.domain and not DOMAIN.match(self.domain):
            raise DeployError(f"--domain {self.domain!r} is not a domain name: give the bare name, "
                              "e.g. bbt.example.org (no scheme, port or path)")


@dataclass
class Deployment:
    """The resources of one deployment, as found by their tags."""

    deployment_id: str
    instances: list[dict] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    load_balancer_dns: str | None = None  # a fleet's address; a single instance has none

    @property
    def public_ip(self) -> str | None:
        running = [i for i in self.instances if i.get("PublicIpAddress")]
        return running[0]["PublicIpAddress"] if running else None

    @property
    def url(self) -> str | None:
        """Plain HTTP to the load balancer or the address: the probes answer there also with --https."""
        if self.load_balancer_dns:
            return f"http://{self.load_balancer_dns}/"
        return f"http://{self.public_ip}/" if self.public_ip else None

    @property
    def domain(self) -> str | None:
        return next((d for i in self.instances if (d := tag_value(i.get("Tags", []), DOMAIN_TAG))), None)

    @property
    def public_url(self) -> str | None:
        return f"https://{self.domain}/" if self.domain else self.url

    @property
    def state(self) -> str:
        return ",".join(i["State"]["Name"] for i in self.instances) or "no instance"


def new_deployment_id() -> str:
    return f"bbt-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def resolve_ami(session: boto3.Session, ami: str | None) -> dict:
    """The image to launch: --ami, or the latest Debian 12 published in the region's SSM parameters."""
    if ami is None:
        try:
            ami = session.client("ssm").get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
        except botocore.exceptions.ClientError as err:
            raise DeployError(f"could not look up the Debian 12 AMI ({DEFAULT_AMI_PARAMETER}) in "
                              f"{session.region_name}: {error_code(err)}; pass --ami ami-... "
                              "(a Debian 12 amd64 image of that region)") from None
    with aws_errors(f"looking up AMI {ami}"):
        images = session.client("ec2").describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise DeployError(f"AMI {ami} does not exist in {session.region_name}: AMI ids differ per region")
    return images[0]


def instance_memory_mib(ec2, instance_type: str) -> int:
    """The instance type's RAM: from the table of suggested types, else from AWS (which also checks the name)."""
    if instance_type in INSTANCE_MEMORY_MIB:
        return INSTANCE_MEMORY_MIB[instance_type]
    with aws_errors(f"looking up instance type {instance_type}"):
        [described] = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    return described["MemoryInfo"]["SizeInMiB"]


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
        VpcId=vpc_id, TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(deployment_id)}],
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


def launch_instance(ec2, deployment_id: str, image: dict, group_id: str, user_data: str, options: Ec2Options,
                    archive_uri: str, profile: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """One instance from the image with the user-data, the group, the role, tags, and an encrypted volume."""
    extra_tags = {ARCHIVE_TAG: archive_uri, **({DOMAIN_TAG: options.domain} if options.domain else {})}
    request = {
        "ImageId": image["ImageId"], "InstanceType": options.instance_type, "MinCount": 1, "MaxCount": 1,
        "UserData": user_data, "SecurityGroupIds": [group_id], "IamInstanceProfile": {"Name": profile},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName", "/dev/xvda"),
                                 "Ebs": {"VolumeSize": options.volume_gb, "VolumeType": "gp3",
                                         "Encrypted": True, "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags(deployment_id, **extra_tags)},
                              {"ResourceType": "volume", "Tags": tags(deployment_id)}],
    }
    if options.key_name:
        request["KeyName"] = options.key_name
    if options.subnet_id:
        request["SubnetId"] = options.subnet_id
    attempts = 0
    while True:
        try:
            return ec2.run_instances(**request)["Instances"][0]["InstanceId"]
        except botocore.exceptions.ClientError as err:
            attempts += 1
            profile_not_visible = error_code(err) == "InvalidParameterValue" and "iamInstanceProfile" in str(err)
            if not profile_not_visible or attempts >= PROFILE_RETRIES:
                raise
            sleep(PROFILE_RETRY_S)


def deploy_ec2(archive: Path, bento_tag: str, bentoml_version: str, options: Ec2Options,
               session: boto3.Session | None = None,
               wait_ready: Callable[[str, float], None] | None = None,
               echo: Callable[[str], None] = log.info) -> Deployment:
    """Create the security group, upload the archive, launch the instance, wait for /readyz through nginx.

    If a step before the instance is running fails, whatever was created is removed again.
    `wait_ready(url, timeout_s)` defaults to polling the public /readyz.
    """
    session = session or aws_session(options.region, options.profile)
    wait_ready = wait_ready or (lambda url, timeout: wait_until_ready(
        url, timeout, 10, what="the instance", hint="check it with `bbt deploy status`"))
    if not archive.is_file():
        raise DeployError(f"{archive} is not a file: export a bento first (`bentoml export TAG PATH`)")
    deployment_id = new_deployment_id()
    ec2 = session.client("ec2")
    echo(f"deployment {deployment_id} in {session.region_name}")
    image = resolve_ami(session, options.ami)
    if options.memory_max_mib:
        memory = MemoryLimits.of_max(options.memory_max_mib)
    else:
        memory = MemoryLimits.for_instance(instance_memory_mib(ec2, options.instance_type))
    if options.key_name:
        with aws_errors(f"looking up key pair {options.key_name!r}"):
            ec2.describe_key_pairs(KeyNames=[options.key_name])
    try:
        with aws_errors("creating the security group"):
            group_id = create_security_group(ec2, deployment_id, _vpc_of(ec2, options.subnet_id), options)
        echo(f"security group {group_id}: port 80" + (", 443" if options.https else "")
             + (f", SSH from {options.ssh_cidr}" if options.ssh_cidr else ""))
        with aws_errors("uploading the bento to S3"):
            bucket, key = ship_archive(session, deployment_id, archive, options.bucket, group_id)
        echo(f"bento {bento_tag} uploaded to s3://{bucket}/{key}")
        with aws_errors("creating the instance's IAM role (read access to the archive only)"):
            profile = create_instance_role(session, deployment_id, bucket, key)
        site = SiteSettings.for_service(options.serve, server_name=options.domain or "_",
                                        tls=TlsSettings() if options.https else None)
        user_data = render_user_data(deployment_id, bento_tag, Archive(bucket, key, session.region_name),
                                     bentoml_version, site, memory=memory, keep_feedback=options.keep_feedback)
        with aws_errors("launching the instance"):
            instance_id = launch_instance(ec2, deployment_id, image, group_id, user_data, options,
                                          f"s3://{bucket}/{key}", profile)
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
    except (DeployError, NotReady) as err:
        raise DeployError(f"{err}; the instance keeps running (and costing): look at /var/log/cloud-init-output.log "
                          f"over SSH, or remove it with `bbt deploy destroy {deployment_id}`") from None
    echo(f"ready: {deployment.url}")
    if options.domain:
        echo(f"point the DNS A record of {options.domain} at {deployment.public_ip}: the instance asks Let's Encrypt "
             f"for its certificate every 5 minutes until the name reaches it, then serves {deployment.public_url}")
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

    def entry(resource_tags: list[dict[str, str]]) -> Deployment:
        owner = tag_value(resource_tags)
        deployment = found.setdefault(owner, Deployment(owner))
        archive_uri = tag_value(resource_tags, ARCHIVE_TAG)
        if archive_uri and archive_uri not in deployment.archives:
            deployment.archives.append(archive_uri)
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
                bucket_tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
            except botocore.exceptions.ClientError:
                continue
            if tag_value(bucket_tags) and deployment_id in (None, tag_value(bucket_tags)):
                entry(bucket_tags).buckets.append(name)
        for owner, role in find_roles(session, deployment_id).items():
            entry([{"Key": TAG_KEY, "Value": owner}]).roles.append(role)
    for owner, fleet in find_fleets(session, deployment_id).items():
        deployment = entry([{"Key": TAG_KEY, "Value": owner}])
        deployment.load_balancer_dns = fleet.load_balancer["DNSName"] if fleet.load_balancer else None
        # Every bento a rollout shipped, so `destroy` also removes those it put in a bucket it did not create.
        with aws_errors("listing the launch template versions"):
            versions = template_versions(ec2, fleet)
        for uri in (v.archive_uri for v in versions if v.archive_uri):
            if uri not in deployment.archives:
                deployment.archives.append(uri)
    return found


def destroy(session: boto3.Session, deployment_id: str) -> list[str]:
    """The fleet (ASG, ALB, launch template) if any; terminate the instance; delete the security groups, the IAM
    role, the archive and the bucket if bbt made it."""
    deployment = find_deployments(session, deployment_id).get(deployment_id)  # archives named by the fleet too
    removed = destroy_fleet(session, deployment_id)
    if deployment is None:
        return removed
    ec2, s3 = session.client("ec2"), session.client("s3")
    with aws_errors(f"destroying {deployment_id}"):
        for uri in deployment.archives:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            if bucket not in deployment.buckets:
                s3.delete_object(Bucket=bucket, Key=key)
                removed.append(uri)
        for bucket in deployment.buckets:
            delete_bucket(s3, bucket)
            removed.append(f"s3://{bucket}")
        instance_ids = [i["InstanceId"] for i in deployment.instances]
        if instance_ids:
            ec2.terminate_instances(InstanceIds=instance_ids)
            # The group and the role stay in use until their instance is gone.
            ec2.get_waiter("instance_terminated").wait(InstanceIds=instance_ids,
                                                       WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            removed.extend(instance_ids)
        for group_id in deployment.security_groups:
            ec2.delete_security_group(GroupId=group_id)
            removed.append(group_id)
        for role in deployment.roles:
            delete_instance_role(session, role)
            removed.append(f"IAM role {role}")
    return removed
