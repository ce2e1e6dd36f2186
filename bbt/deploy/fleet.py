"""The fleet: instances from a launch template in an Auto Scaling Group, behind an Application Load Balancer.

The load balancer's address is the deployment's URL for its whole life: a new bento reaches users by a
rollout (new launch-template version, new instances, old ones go), a traffic peak by the ASG adding instances.
Every resource carries the `bbt:deployment` tag, as the single-instance deployment's do, so `status` and
`destroy` find exactly these.
"""

from __future__ import annotations

import base64
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3

from bbt.deploy import DeployError
from bbt.deploy.aws import ARCHIVE_TAG, TAG_KEY, aws_errors, tag_value, tags

log = logging.getLogger(__name__)

BENTO_TAG = "bbt:bento"
# cloud-init installs Python, the bento and nginx in ~5-10 min: the ASG must not replace an instance for failing
# its ELB health check before that.
HEALTH_CHECK_GRACE_S = 900
# The service is CPU-bound (face detection + embedding per photo, 2 workers on 2 vCPUs): CPU is what runs out
# first, whereas requests per target vary with photo size. 60% leaves room for the ~10 minutes a new instance
# needs before it serves, so a rising peak is absorbed by the running ones meanwhile.
CPU_TARGET_PERCENT = 60.0
# A released target finishes its requests (the service's timeout is ~30 s) before it goes; AWS's 300 s default
# would make every rollout and scale-in five minutes longer.
DEREGISTRATION_DELAY_S = 45
HEALTH_POLL_S = 15.0
MAX_INSTANCES = 20


@dataclass(frozen=True)
class FleetSize:
    """How many instances: at least `minimum`, at most `maximum`; it starts with `minimum`."""

    minimum: int = 1
    maximum: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum <= MAX_INSTANCES:
            raise DeployError(f"--min {self.minimum} --max {self.maximum}: need 1 <= min <= max <= {MAX_INSTANCES}"
                              " (e.g. --min 2 --max 4)")


@dataclass(frozen=True)
class Release:
    """One bento as a launch template version serves it: its tag, where its archive is, the user data."""

    bento_tag: str
    archive_uri: str
    user_data: str


@dataclass
class TemplateVersion:
    number: int
    bento_tag: str | None
    archive_uri: str | None
    current: bool = False


@dataclass
class FleetInstance:
    instance_id: str
    state: str
    health: str
    bento_tag: str | None


@dataclass
class Fleet:
    """A deployment's ASG, load balancer, target group and launch template, as found by their tags."""

    deployment_id: str
    group: dict | None = None
    load_balancer: dict | None = None
    target_group_arn: str | None = None
    listener_arns: list[str] = field(default_factory=list)
    launch_template_id: str | None = None

    @property
    def url(self) -> str | None:
        return f"http://{self.load_balancer['DNSName']}/" if self.load_balancer else None

    @property
    def template_version(self) -> int | None:
        """The launch template version the ASG launches now."""
        return int(self.group["LaunchTemplate"]["Version"]) if self.group else None


_CLIENTS: weakref.WeakKeyDictionary[boto3.Session, dict[str, Any]] = weakref.WeakKeyDictionary()


def client(session: boto3.Session, service: str) -> Any:
    """One client per session and service: making one takes ~50 ms, and a rollout asks AWS dozens of times."""
    clients = _CLIENTS.setdefault(session, {})
    if service not in clients:
        clients[service] = session.client(service)
    return clients[service]


# --- creating -------------------------------------------------------------------------------------------------


def default_subnets(ec2, vpc_id: str) -> list[str]:
    """One subnet per availability zone of the VPC (an ALB needs two zones at least)."""
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    by_zone: dict[str, str] = {}
    for subnet in sorted(subnets, key=lambda s: (not s.get("DefaultForAz", False), s["SubnetId"])):
        by_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
    if len(by_zone) < 2:
        raise DeployError(f"VPC {vpc_id} has subnets in {len(by_zone)} availability zone(s); a load balancer "
                          "needs two: use a region's default VPC or add a public subnet in a second zone")
    return [by_zone[zone] for zone in sorted(by_zone)]


def create_fleet_security_groups(ec2, deployment_id: str, vpc_id: str, https: bool,
                                 ssh_cidr: str | None) -> tuple[str, str]:
    """The ALB's group (80, 443 from anywhere) and the instances' (80 from the ALB's group only, SSH as asked)."""
    alb_group = ec2.create_security_group(
        GroupName=f"{deployment_id}-alb", Description=f"bbt deployment {deployment_id}: the load balancer",
        VpcId=vpc_id, TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(deployment_id)}],
    )["GroupId"]
    public = {"IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ports = [80, 443] if https else [80]
    ec2.authorize_security_group_ingress(GroupId=alb_group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": p, "ToPort": p, **public} for p in ports])
    instance_group = ec2.create_security_group(
        GroupName=deployment_id, Description=f"bbt deployment {deployment_id}: HTTP from its ALB, SSH from one CIDR",
        VpcId=vpc_id, TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(deployment_id)}],
    )["GroupId"]
    rules = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
              "UserIdGroupPairs": [{"GroupId": alb_group, "Description": "the deployment's load balancer"}]}]
    if ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": ssh_cidr, "Description": "SSH for maintenance"}]})
    ec2.authorize_security_group_ingress(GroupId=instance_group, IpPermissions=rules)
    return alb_group, instance_group


def template_data(image: dict, instance_type: str, group_id: str, profile: str, key_name: str | None,
                  volume_gb: int, deployment_id: str, release: Release) -> dict:
    """What each instance is launched with: the same settings as the single instance, plus the bento's tag."""
    data = {
        "ImageId": image["ImageId"], "InstanceType": instance_type,
        "UserData": base64.b64encode(release.user_data.encode()).decode(),
        "SecurityGroupIds": [group_id], "IamInstanceProfile": {"Name": profile},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName", "/dev/xvda"),
                                 "Ebs": {"VolumeSize": volume_gb, "VolumeType": "gp3",
                                         "Encrypted": True, "DeleteOnTermination": True}}],
        "TagSpecifications": [
            {"ResourceType": "instance",
             "Tags": tags(deployment_id, **{BENTO_TAG: release.bento_tag, ARCHIVE_TAG: release.archive_uri})},
            {"ResourceType": "volume", "Tags": tags(deployment_id)}],
    }
    if key_name:
        data["KeyName"] = key_name
    return data


def version_description(release: Release) -> str:
    """Where `status` and a rollback read which bento a version serves (<= 255 characters)."""
    return f"{release.bento_tag} {release.archive_uri}"[:255]


def create_launch_template(ec2, deployment_id: str, data: dict, release: Release) -> tuple[str, int]:
    template = ec2.create_launch_template(
        LaunchTemplateName=deployment_id, VersionDescription=version_description(release), LaunchTemplateData=data,
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags(deployment_id)}],
    )["LaunchTemplate"]
    return template["LaunchTemplateId"], int(template["LatestVersionNumber"])


def create_load_balancer(elbv2, deployment_id: str, vpc_id: str, subnets: list[str],
                         alb_group: str) -> tuple[str, str, str]:
    """Target group (HTTP 80, /readyz answers 200), internet-facing ALB, HTTP listener; returns their ARNs."""
    target_group = elbv2.create_target_group(
        Name=deployment_id[:32], Protocol="HTTP", Port=80, VpcId=vpc_id, TargetType="instance",
        HealthCheckProtocol="HTTP", HealthCheckPath="/readyz", HealthCheckIntervalSeconds=15,
        HealthCheckTimeoutSeconds=5, HealthyThresholdCount=2, UnhealthyThresholdCount=3, Matcher={"HttpCode": "200"},
        Tags=tags(deployment_id),
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(TargetGroupArn=target_group, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": str(DEREGISTRATION_DELAY_S)}])
    balancer = elbv2.create_load_balancer(
        Name=deployment_id[:32], Subnets=subnets, SecurityGroups=[alb_group], Scheme="internet-facing",
        Type="application", IpAddressType="ipv4", Tags=tags(deployment_id),
    )["LoadBalancers"][0]["LoadBalancerArn"]
    listener = elbv2.create_listener(
        LoadBalancerArn=balancer, Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": target_group}], Tags=tags(deployment_id),
    )["Listeners"][0]["ListenerArn"]
    return balancer, target_group, listener


def create_group(autoscaling, deployment_id: str, template_id: str, version: int, size: FleetSize,
                 subnets: list[str], target_group: str) -> None:
    """The ASG: ELB health checks with a grace period, tags on every instance, CPU target tracking."""
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=deployment_id,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
        MinSize=size.minimum, MaxSize=size.maximum, DesiredCapacity=size.minimum,
        VPCZoneIdentifier=",".join(subnets), TargetGroupARNs=[target_group],
        HealthCheckType="ELB", HealthCheckGracePeriod=HEALTH_CHECK_GRACE_S,
        # On a scale-in, instances of an older bento go first (a rollout's surge shrinks back onto the new one).
        TerminationPolicies=["OldestLaunchTemplate", "OldestInstance"],
        Tags=[{**t, "ResourceId": deployment_id, "ResourceType": "auto-scaling-group", "PropagateAtLaunch": True}
              for t in tags(deployment_id)],
    )
    autoscaling.put_scaling_policy(
        AutoScalingGroupName=deployment_id, PolicyName=f"{deployment_id}-cpu", PolicyType="TargetTrackingScaling",
        TargetTrackingConfiguration={
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ASGAverageCPUUtilization"},
            "TargetValue": CPU_TARGET_PERCENT},
    )


# --- finding --------------------------------------------------------------------------------------------------


def _has_tag(resource_tags: list[dict], deployment_id: str | None) -> str | None:
    owner = tag_value(resource_tags)
    return owner if owner and deployment_id in (None, owner) else None


def find_fleets(session: boto3.Session, deployment_id: str | None = None) -> dict[str, Fleet]:
    """Every deployment's fleet resources (or one deployment's), by the `bbt:deployment` tag."""
    ec2, elbv2, autoscaling = client(session, "ec2"), client(session, "elbv2"), client(session, "autoscaling")
    found: dict[str, Fleet] = {}

    def fleet(owner: str) -> Fleet:
        return found.setdefault(owner, Fleet(owner))

    with aws_errors("listing the load balancers and auto scaling groups"):
        for page in autoscaling.get_paginator("describe_auto_scaling_groups").paginate():
            for group in page["AutoScalingGroups"]:
                if owner := _has_tag(group.get("Tags", []), deployment_id):
                    fleet(owner).group = group
        balancers = [b for page in elbv2.get_paginator("describe_load_balancers").paginate()
                     for b in page["LoadBalancers"]]
        groups = [g for page in elbv2.get_paginator("describe_target_groups").paginate() for g in page["TargetGroups"]]
        arns = [b["LoadBalancerArn"] for b in balancers] + [g["TargetGroupArn"] for g in groups]
        owners = {}
        for start in range(0, len(arns), 20):  # DescribeTags takes 20 ARNs at most
            for described in elbv2.describe_tags(ResourceArns=arns[start:start + 20])["TagDescriptions"]:
                if owner := _has_tag(described.get("Tags", []), deployment_id):
                    owners[described["ResourceArn"]] = owner
        for balancer in balancers:
            if owner := owners.get(balancer["LoadBalancerArn"]):
                fleet(owner).load_balancer = balancer
                fleet(owner).listener_arns = [listener["ListenerArn"] for listener in elbv2.describe_listeners(
                    LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]]
        for group in groups:
            if owner := owners.get(group["TargetGroupArn"]):
                fleet(owner).target_group_arn = group["TargetGroupArn"]
        tag_filter = ({"Name": f"tag:{TAG_KEY}", "Values": [deployment_id]} if deployment_id
                      else {"Name": "tag-key", "Values": [TAG_KEY]})
        for template in ec2.describe_launch_templates(Filters=[tag_filter])["LaunchTemplates"]:
            if owner := _has_tag(template.get("Tags", []), deployment_id):
                fleet(owner).launch_template_id = template["LaunchTemplateId"]
    return found


def template_versions(ec2, fleet: Fleet) -> list[TemplateVersion]:
    """The launch template's versions, newest first, with the bento each serves; `current` is the ASG's."""
    if fleet.launch_template_id is None:
        return []
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=fleet.launch_template_id)[
        "LaunchTemplateVersions"]
    listed = []
    for version in sorted(versions, key=lambda v: -int(v["VersionNumber"])):
        bento, _, archive = (version.get("VersionDescription") or "").partition(" ")
        listed.append(TemplateVersion(int(version["VersionNumber"]), bento or None, archive or None,
                                      current=int(version["VersionNumber"]) == fleet.template_version))
    return listed


def fleet_instances(session: boto3.Session, fleet: Fleet) -> list[FleetInstance]:
    """The ASG's instances: lifecycle state, target-group health, and the bento their launch data names."""
    if fleet.group is None:
        return []
    ids = [i["InstanceId"] for i in fleet.group["Instances"]]
    if not ids:
        return []
    health = target_health(client(session, "elbv2"), fleet.target_group_arn, ids) if fleet.target_group_arn else {}
    described = {i["InstanceId"]: i for r in client(session, "ec2").describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]}
    return [FleetInstance(i["InstanceId"], i["LifecycleState"], health.get(i["InstanceId"], "unknown"),
                          tag_value(described.get(i["InstanceId"], {}).get("Tags", []), BENTO_TAG))
            for i in fleet.group["Instances"]]


def target_health(elbv2, target_group: str, instance_ids: list[str]) -> dict[str, str]:
    answer = elbv2.describe_target_health(TargetGroupArn=target_group,
                                          Targets=[{"Id": i, "Port": 80} for i in instance_ids])
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in answer["TargetHealthDescriptions"]}


def wait_healthy(session: boto3.Session, fleet: Fleet, instance_ids: list[str], timeout_s: float,
                 poll_s: float = HEALTH_POLL_S, sleep: Callable[[float], None] = time.sleep) -> None:
    """Until the load balancer reports every one of `instance_ids` healthy; DeployError naming the rest after."""
    elbv2 = client(session, "elbv2")
    deadline = time.monotonic() + timeout_s
    while True:
        with aws_errors("asking the target group for its health"):
            health = target_health(elbv2, fleet.target_group_arn, instance_ids)
        unhealthy = {i: s for i, s in health.items() if s != "healthy"}
        if not unhealthy and set(health) >= set(instance_ids):
            return
        if time.monotonic() >= deadline:
            states = ", ".join(f"{i} {s}" for i, s in sorted(unhealthy.items()))
            raise DeployError(f"after {timeout_s:g} s the load balancer still reports {states}: the instances did "
                              "not answer /readyz with 200 (look at /var/log/cloud-init-output.log over SSH)")
        sleep(poll_s)


def group_of(session: boto3.Session, deployment_id: str) -> dict:
    with aws_errors(f"looking up the auto scaling group {deployment_id}"):
        groups = client(session, "autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[deployment_id])["AutoScalingGroups"]
    if not groups:
        raise DeployError(f"deployment {deployment_id} has no auto scaling group: it is a single instance "
                          "(redeploy with `bbt deploy ec2 --min N --max M`) or gone (see `bbt deploy status`)")
    return groups[0]


# --- removing -------------------------------------------------------------------------------------------------


def destroy_fleet(session: boto3.Session, deployment_id: str, poll_s: float = 5.0, timeout_s: float = 900,
                  sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """ASG first (and its instances), then listener, ALB, target group, launch template.

    The security groups stay for the caller (`ec2.destroy` deletes them by tag); rules between them are
    revoked here, since a group another group's rule names cannot be deleted.
    """
    fleet = find_fleets(session, deployment_id).get(deployment_id)
    if fleet is None:
        return []
    ec2, elbv2, autoscaling = client(session, "ec2"), client(session, "elbv2"), client(session, "autoscaling")
    removed: list[str] = []
    with aws_errors(f"destroying the fleet of {deployment_id}"):
        if fleet.group:
            autoscaling.delete_auto_scaling_group(AutoScalingGroupName=deployment_id, ForceDelete=True)
            _wait_group_gone(autoscaling, deployment_id, poll_s, timeout_s, sleep)
            removed.append(f"auto scaling group {deployment_id}")
        for listener in fleet.listener_arns:
            elbv2.delete_listener(ListenerArn=listener)
        if fleet.load_balancer:
            elbv2.delete_load_balancer(LoadBalancerArn=fleet.load_balancer["LoadBalancerArn"])
            elbv2.get_waiter("load_balancers_deleted").wait(
                LoadBalancerArns=[fleet.load_balancer["LoadBalancerArn"]], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
            removed.append(f"load balancer {fleet.load_balancer['LoadBalancerName']}")
        if fleet.target_group_arn:
            elbv2.delete_target_group(TargetGroupArn=fleet.target_group_arn)
            removed.append(f"target group {fleet.target_group_arn.rsplit(':', 1)[-1]}")
        if fleet.launch_template_id:
            ec2.delete_launch_template(LaunchTemplateId=fleet.launch_template_id)
            removed.append(f"launch template {fleet.launch_template_id}")
        groups = ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [deployment_id]}])
        for group in groups["SecurityGroups"]:
            referencing = [p for p in group["IpPermissions"] if p.get("UserIdGroupPairs")]
            if referencing:
                ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=referencing)
    return removed


def _wait_group_gone(autoscaling, name: str, poll_s: float, timeout_s: float, sleep: Callable[[float], None]) -> None:
    """Deleting an ASG terminates its instances first; the groups and the role are in use until then."""
    deadline = time.monotonic() + timeout_s
    while autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]:
        if time.monotonic() >= deadline:
            raise DeployError(f"auto scaling group {name} is still deleting after {timeout_s:g} s: run "
                              f"`bbt deploy destroy {name}` again in a few minutes")
        sleep(poll_s)

