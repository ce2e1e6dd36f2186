"""Roll a new bento out to a running fleet, in place (same load balancer, same URL), or leave the old one serving.

A surge rollout: a new launch template version, as many new instances as run now launched from it beside the
old ones, and only when the load balancer reports every new one healthy on /readyz and the caller's probe
agrees are the old ones terminated. On any failure the new instances go and the ASG launches from the old
version again: the old instances never stopped serving. This is what an ASG instance refresh with
MinHealthyPercentage=100 / MaxHealthyPercentage=200 does, but driven here so that the caller's smoke test
gates the switch and so that it runs on moto (which has no StartInstanceRefresh) in the tests.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import boto3

from bbt.deploy import DeployError
from bbt.deploy.aws import ARCHIVE_TAG, aws_errors, tag_value
from bbt.deploy.ec2 import Ec2Options
from bbt.deploy.fleet import (
    BENTO_TAG,
    HEALTH_POLL_S,
    Fleet,
    Release,
    client,
    find_fleets,
    group_of,
    template_versions,
    version_description,
    wait_healthy,
)
from bbt.deploy.fleet_deploy import memory_limits, render_release
from bbt.deploy.iam import read_archive_policy
from bbt.deploy.s3 import upload_archive

log = logging.getLogger(__name__)

# Scaling stays put while two versions run side by side (the CPU policy must not scale in the new instances),
# and the old instances, out of the load balancer while the probe runs, must not count as unhealthy and go.
PAUSED_PROCESSES = ["AlarmNotification", "ScheduledActions", "AZRebalance", "HealthCheck", "ReplaceUnhealthy"]
# How long a rollback waits for the old instances to pass the health check again once back in the target group.
RESTORE_TIMEOUT_S = 300


class RolloutFailed(DeployError):
    """The new version did not become healthy or failed the probe; the old version still serves."""


def fleet_of(session: boto3.Session, deployment_id: str) -> Fleet:
    fleet = find_fleets(session, deployment_id).get(deployment_id)
    if fleet is None or None in (fleet.group, fleet.load_balancer, fleet.launch_template_id, fleet.target_group_arn):
        raise DeployError(f"deployment {deployment_id} has no auto scaling group behind a load balancer: deploy it "
                          "with `bbt deploy ec2 --min N --max M` (see `bbt deploy status`)")
    return fleet


def prepare_release(session: boto3.Session, deployment_id: str, archive: Path, bento_tag: str,
                    bentoml_version: str, options: Ec2Options) -> Release:
    """Upload the new archive next to the current one and let the instances' role read both (rollback needs
    the old one); the release's user data, for the fleet's instance type (`options` gives the serve params and
    keep_feedback)."""
    fleet = fleet_of(session, deployment_id)
    current = next(v for v in template_versions(client(session, "ec2"), fleet) if v.current)
    if not current.archive_uri:
        raise DeployError(f"launch template version {current.number} of {deployment_id} names no archive")
    bucket = current.archive_uri.removeprefix("s3://").split("/", 1)[0]
    with aws_errors(f"uploading {archive.name} to s3://{bucket}"):
        key = upload_archive(session, deployment_id, archive, bucket)
    iam = client(session, "iam")
    with aws_errors(f"letting the role {deployment_id} read the new archive"):
        policy = iam.get_role_policy(RoleName=deployment_id, PolicyName="read-archive")["PolicyDocument"]
        [statement] = policy["Statement"]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        partition = session.get_partition_for_region(session.region_name)
        new = read_archive_policy(bucket, key, partition)["Statement"][0]["Resource"]
        statement["Resource"] = sorted({*resources, new})
        iam.put_role_policy(RoleName=deployment_id, PolicyName="read-archive", PolicyDocument=json.dumps(policy))
    # The unit's memory limits follow the instances the fleet runs, whatever `options` defaults to.
    [data] = client(session, "ec2").describe_launch_template_versions(
        LaunchTemplateId=fleet.launch_template_id, Versions=[str(current.number)])["LaunchTemplateVersions"]
    options = replace(options, instance_type=data["LaunchTemplateData"].get("InstanceType", options.instance_type))
    memory = memory_limits(client(session, "ec2"), options)
    return render_release(session, deployment_id, bento_tag, bentoml_version, bucket, key, options, memory,
                          fleet.load_balancer["VpcId"])


def create_version(ec2, fleet: Fleet, release: Release) -> int:
    """A new launch template version: the current one's data with the release's user data and bento tags."""
    [source] = ec2.describe_launch_template_versions(
        LaunchTemplateId=fleet.launch_template_id, Versions=[str(fleet.template_version)])["LaunchTemplateVersions"]
    data = dict(source["LaunchTemplateData"])
    data["UserData"] = base64.b64encode(release.user_data.encode()).decode()
    specs = []
    for spec in data.get("TagSpecifications", []):
        if spec["ResourceType"] == "instance":
            kept = [t for t in spec["Tags"] if t["Key"] not in (BENTO_TAG, ARCHIVE_TAG)]
            spec = {**spec, "Tags": [*kept, {"Key": BENTO_TAG, "Value": release.bento_tag},
                                     {"Key": ARCHIVE_TAG, "Value": release.archive_uri}]}
        specs.append(spec)
    data["TagSpecifications"] = specs
    version = ec2.create_launch_template_version(
        LaunchTemplateId=fleet.launch_template_id, VersionDescription=version_description(release),
        LaunchTemplateData=data)["LaunchTemplateVersion"]
    return int(version["VersionNumber"])


def _wait_launched(session: boto3.Session, deployment_id: str, old_ids: set[str], count: int, timeout_s: float,
                   poll_s: float, sleep: Callable[[float], None]) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        instances = group_of(session, deployment_id)["Instances"]
        new = [i["InstanceId"] for i in instances if i["InstanceId"] not in old_ids and i["LifecycleState"] in
               ("Pending", "Pending:Wait", "Pending:Proceed", "InService")]
        if len(new) >= count:
            return new[:count]
        if time.monotonic() >= deadline:
            raise DeployError(f"the auto scaling group launched {len(new)} of {count} new instance(s) in "
                              f"{timeout_s:g} s (see its activity history: `aws autoscaling "
                              f"describe-scaling-activities --auto-scaling-group-name {deployment_id}`)")
        sleep(poll_s)


def roll_out(session: boto3.Session, deployment_id: str, release: Release,
             probe: Callable[[str], bool] | None = None, timeout_s: float = 1200,
             echo: Callable[[str], None] = log.info, poll_s: float = HEALTH_POLL_S,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Serve `release` on the fleet; returns the new launch template version.

    `probe(url)` runs against the load balancer once the new instances are healthy, with the old ones taken out
    of its target group meanwhile so that it sees the new version alone; False stops the rollout. On any
    failure the old instances go back into the target group, the new ones are terminated once the old pass
    the health check again, the ASG launches the old version again, and RolloutFailed says why.
    """
    fleet = fleet_of(session, deployment_id)
    ec2, autoscaling = client(session, "ec2"), client(session, "autoscaling")
    group = fleet.group
    old_version, desired, maximum = fleet.template_version, group["DesiredCapacity"], group["MaxSize"]
    old_ids = {i["InstanceId"] for i in group["Instances"]}
    old_bento = next((v.bento_tag for v in template_versions(ec2, fleet) if v.current), None)
    with aws_errors("creating the launch template version"):
        new_version = create_version(ec2, fleet, release)
    echo(f"{deployment_id}: launch template version {new_version} serves {release.bento_tag}; "
         f"launching {desired} instance(s) beside the {len(old_ids)} of version {old_version}")
    new_ids: list[str] = []
    try:
        with aws_errors("starting the rollout"):
            autoscaling.suspend_processes(AutoScalingGroupName=deployment_id, ScalingProcesses=PAUSED_PROCESSES)
            autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=deployment_id,
                LaunchTemplate={"LaunchTemplateId": fleet.launch_template_id, "Version": str(new_version)},
                MaxSize=max(maximum, desired * 2), DesiredCapacity=desired * 2)
        deadline = time.monotonic() + timeout_s
        new_ids = _wait_launched(session, deployment_id, old_ids, desired, timeout_s, poll_s, sleep)
        echo(f"new instance(s) {', '.join(new_ids)} launched: waiting for the load balancer to find /readyz "
             "healthy on them")
        wait_healthy(session, fleet, new_ids, max(0.0, deadline - time.monotonic()), poll_s, sleep)
        echo(f"new instance(s) {', '.join(new_ids)} healthy behind {fleet.url}")
        if probe is not None:
            with aws_errors("taking the old instances out of the load balancer for the probe"):
                targets(session, fleet, old_ids, register=False)
            echo(f"old instance(s) {', '.join(sorted(old_ids))} out of the load balancer: probing {fleet.url}")
            if not _probe_passes(probe, fleet.url):
                raise DeployError(f"the probe of {fleet.url} failed with {release.bento_tag} serving")
    except BaseException as err:
        _back_to(session, fleet, old_version, new_ids, maximum, echo, poll_s, sleep)
        if isinstance(err, DeployError):
            raise RolloutFailed(f"rollout of {release.bento_tag} to {deployment_id} stopped: {err}; production "
                                f"keeps serving {old_bento or 'the old bento'} (launch template version "
                                f"{old_version})") from None
        raise
    with aws_errors("retiring the old instances"):
        for instance_id in sorted(old_ids):
            autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance_id,
                                                                 ShouldDecrementDesiredCapacity=True)
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=deployment_id, MaxSize=maximum)
        ec2.modify_launch_template(LaunchTemplateId=fleet.launch_template_id, DefaultVersion=str(new_version))
        autoscaling.resume_processes(AutoScalingGroupName=deployment_id, ScalingProcesses=PAUSED_PROCESSES)
    echo(f"{deployment_id} serves {release.bento_tag} (version {new_version}); {len(old_ids)} old instance(s) "
         "terminating")
    return new_version


def _probe_passes(probe: Callable[[str], bool], url: str) -> bool:
    """The caller's verdict; a probe that cannot reach the URL or breaks says the new version is not fit either."""
    try:
        return bool(probe(url))
    except Exception as err:  # any failure of the check stops the rollout, with its reason
        raise DeployError(f"the probe of {url} failed: {type(err).__name__}: {err}") from err


def targets(session: boto3.Session, fleet: Fleet, instance_ids: set[str], register: bool) -> None:
    """Put instances into the fleet's target group, or take them out (the ALB sends them no new request)."""
    if not instance_ids:
        return
    elbv2 = client(session, "elbv2")
    call = elbv2.register_targets if register else elbv2.deregister_targets
    call(TargetGroupArn=fleet.target_group_arn, Targets=[{"Id": i, "Port": 80} for i in sorted(instance_ids)])


def _back_to(session: boto3.Session, fleet: Fleet, version: int, new_ids: list[str], maximum: int,
             echo: Callable[[str], None], poll_s: float, sleep: Callable[[float], None]) -> None:
    """The old instances serve again, the new ones go, the ASG launches `version`, the sizes are as before."""
    autoscaling = client(session, "autoscaling")
    old_ids = {i["InstanceId"] for i in fleet.group["Instances"]}
    with aws_errors(f"putting the old instances of {fleet.deployment_id} back into the load balancer"):
        targets(session, fleet, old_ids, register=True)
    # The new instances stay until the old ones pass the health check again: the URL always has someone behind it.
    wait_healthy(session, fleet, sorted(old_ids), RESTORE_TIMEOUT_S, poll_s, sleep)
    with aws_errors(f"rolling {fleet.deployment_id} back to launch template version {version}"):
        # The new instances go first: with the desired capacity decremented nothing replaces them.
        launched = [i["InstanceId"] for i in group_of(session, fleet.deployment_id)["Instances"]
                    if i["InstanceId"] not in {x["InstanceId"] for x in fleet.group["Instances"]}]
        for instance_id in sorted(set(new_ids) | set(launched)):
            autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance_id,
                                                                 ShouldDecrementDesiredCapacity=True)
        autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=fleet.deployment_id,
            LaunchTemplate={"LaunchTemplateId": fleet.launch_template_id, "Version": str(version)},
            DesiredCapacity=fleet.group["DesiredCapacity"], MaxSize=maximum)
        autoscaling.resume_processes(AutoScalingGroupName=fleet.deployment_id, ScalingProcesses=PAUSED_PROCESSES)
    echo(f"rolled back: {fleet.deployment_id} launches version {version} again; new instance(s) terminating")


def roll_back(session: boto3.Session, deployment_id: str, probe: Callable[[str], bool] | None = None,
              timeout_s: float = 1200, echo: Callable[[str], None] = log.info, poll_s: float = HEALTH_POLL_S,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Roll the version before the current one out again (a rollout like any other, from its template data)."""
    fleet = fleet_of(session, deployment_id)
    versions = template_versions(client(session, "ec2"), fleet)
    older = [v for v in versions if v.number < fleet.template_version and v.bento_tag]
    if not older:
        raise DeployError(f"{deployment_id} has no launch template version before {fleet.template_version}: "
                          "nothing to roll back to")
    previous = older[0]
    [data] = client(session, "ec2").describe_launch_template_versions(
        LaunchTemplateId=fleet.launch_template_id, Versions=[str(previous.number)])["LaunchTemplateVersions"]
    user_data = base64.b64decode(data["LaunchTemplateData"]["UserData"]).decode()
    instance_tags = next((s["Tags"] for s in data["LaunchTemplateData"].get("TagSpecifications", [])
                          if s["ResourceType"] == "instance"), [])
    release = Release(previous.bento_tag, tag_value(instance_tags, ARCHIVE_TAG) or previous.archive_uri or "",
                      user_data)
    return roll_out(session, deployment_id, release, probe, timeout_s, echo, poll_s, sleep)
