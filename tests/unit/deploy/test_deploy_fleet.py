"""`bbt deploy ec2 --min N --max M`, rollouts and `status`/`destroy` of a fleet, against moto's EC2, ELBv2 and
Auto Scaling."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
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
from bbt.deploy.fleet import (
    CPU_TARGET_PERCENT,
    HEALTH_CHECK_GRACE_S,
    FleetSize,
    find_fleets,
    fleet_instances,
    template_versions,
)
from bbt.deploy.fleet_deploy import deploy_fleet
from bbt.deploy.render import SiteSettings, render_site
from bbt.deploy.rollout import RolloutFailed, prepare_release, roll_back, roll_out
from bbt.deploy.staging import check_nginx_config, write_nginx_config
from tests.unit.deploy.test_deploy import REGION, SSH_CIDR, fake_aws_environment, moto_over_https, some_ami

NO_WAIT = {"echo": lambda _: None, "sleep": lambda _: None}


def create_version_keeping_user_data(original):
    """moto 5 decodes UserData for CreateLaunchTemplate but not for CreateLaunchTemplateVersion, then fails an
    assertion launching from such a version; AWS takes both alike: decode it the same way here."""
    from moto.ec2.utils import parse_user_data

    def create_version(self, data: dict, description: str):
        if isinstance(data.get("UserData"), str):
            data = {**data, "UserData": parse_user_data(data["UserData"])}
        return original(self, data, description)

    return create_version


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[boto3.Session]:
    """One moto account for the module (its EC2 backend takes seconds to start): each test makes its own
    deployment and looks only at that one's resources, besides checking that the others' survive."""
    from moto.ec2.models.launch_templates import LaunchTemplate
    from moto.s3.models import FakeBucket

    folder = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as patch:
        fake_aws_environment(patch, folder)
        patch.setattr(FakeBucket, "get_permission", moto_over_https(FakeBucket.get_permission))
        patch.setattr(LaunchTemplate, "create_version", create_version_keeping_user_data(LaunchTemplate.create_version))
        with mock_aws():
            yield aws_session()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "bbt-v1.bento"
    path.write_bytes(b"exported bento stand-in " * 100)
    return path


def deploy(session: boto3.Session, archive: Path, size: FleetSize, bento: str = "bbt:v1", **options) -> str:
    deployment = deploy_fleet(archive, bento, "1.4.40", Ec2Options(ami=some_ami(session), **options), size, session,
                              **NO_WAIT)
    return deployment.deployment_id


def new_archive(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.bento"
    path.write_bytes(name.encode() * 100)
    return path


def bentos_served(session: boto3.Session, deployment_id: str) -> list[str | None]:
    fleet = find_fleets(session, deployment_id)[deployment_id]
    return sorted(i.bento_tag for i in fleet_instances(session, fleet))


def test_a_fleet_of_2_to_4_behind_a_load_balancer(aws: boto3.Session, archive: Path) -> None:
    ec2, elbv2, autoscaling = aws.client("ec2"), aws.client("elbv2"), aws.client("autoscaling")
    ec2.create_key_pair(KeyName="me")
    deployment_id = deploy(aws, archive, FleetSize(2, 4), key_name="me", ssh_cidr=SSH_CIDR)

    [group] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[deployment_id])["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (2, 2, 4)
    assert (group["HealthCheckType"], group["HealthCheckGracePeriod"]) == ("ELB", HEALTH_CHECK_GRACE_S)
    assert len(group["Instances"]) == 2
    subnets = group["VPCZoneIdentifier"].split(",")
    zones = {s["AvailabilityZone"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]}
    assert len(zones) == len(subnets) >= 2
    assert {(t["Key"], t["Value"], t["PropagateAtLaunch"]) for t in group["Tags"]} >= {
        (TAG_KEY, deployment_id, True)}
    [policy] = autoscaling.describe_policies(AutoScalingGroupName=deployment_id)["ScalingPolicies"]
    tracking = policy["TargetTrackingConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    assert tracking["TargetValue"] == CPU_TARGET_PERCENT

    [target_group] = elbv2.describe_target_groups(TargetGroupArns=group["TargetGroupARNs"])["TargetGroups"]
    assert (target_group["Protocol"], target_group["Port"]) == ("HTTP", 80)
    assert (target_group["HealthCheckPath"], target_group["Matcher"]) == ("/readyz", {"HttpCode": "200"})
    [balancer] = elbv2.describe_load_balancers(LoadBalancerArns=target_group["LoadBalancerArns"])["LoadBalancers"]
    assert (balancer["Scheme"], balancer["Type"]) == ("internet-facing", "application")
    [listener] = elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTP", 80)
    assert listener["DefaultActions"][0]["TargetGroupArn"] == target_group["TargetGroupArn"]

    # The ALB takes 80 from anywhere; the instances take 80 from the ALB's group only, SSH from one CIDR.
    [alb_group] = ec2.describe_security_groups(GroupIds=balancer["SecurityGroups"])["SecurityGroups"]
    assert {p["FromPort"]: [r["CidrIp"] for r in p["IpRanges"]] for p in alb_group["IpPermissions"]} == {
        80: ["0.0.0.0/0"]}
    [template] = ec2.describe_launch_template_versions(LaunchTemplateId=group["LaunchTemplate"]["LaunchTemplateId"])[
        "LaunchTemplateVersions"]
    data = template["LaunchTemplateData"]
    [instance_group] = ec2.describe_security_groups(GroupIds=data["SecurityGroupIds"])["SecurityGroups"]
    rules = {p["FromPort"]: p for p in instance_group["IpPermissions"]}
    assert set(rules) == {80, 22}
    assert [g["GroupId"] for g in rules[80]["UserIdGroupPairs"]] == [alb_group["GroupId"]]
    assert rules[80]["IpRanges"] == [] and [r["CidrIp"] for r in rules[22]["IpRanges"]] == [SSH_CIDR]

    assert data["IamInstanceProfile"] == {"Name": deployment_id}
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    assert data["MetadataOptions"]["HttpTokens"] == "required" and data["KeyName"] == "me"
    user_data = base64.b64decode(data["UserData"]).decode()
    assert user_data.startswith("#cloud-config\n") and "bentoml import" in user_data and "certbot" not in user_data
    assert template["VersionDescription"].startswith("bbt:v1 s3://")
    # nginx's per-client limits count the clients the ALB forwards, not the ALB's nodes in the VPC.
    [vpc] = ec2.describe_vpcs(VpcIds=[balancer["VpcId"]])["Vpcs"]
    site = next(f["content"] for f in yaml.safe_load(user_data)["write_files"] if f["path"].endswith("bbt.conf"))
    assert f"set_real_ip_from {vpc['CidrBlock']};\nreal_ip_header X-Forwarded-For;" in site

    # Every instance carries the deployment's tag and the bento it serves; the ALB reports them healthy.
    fleet = find_fleets(aws, deployment_id)[deployment_id]
    assert [(i.state, i.health, i.bento_tag) for i in fleet_instances(aws, fleet)] == [
        ("InService", "healthy", "bbt:v1")] * 2
    deployment = find_deployments(aws)[deployment_id]
    assert deployment.url == f"http://{balancer['DNSName']}/"
    assert len(deployment.instances) == 2


def test_status_shows_the_fleet_its_versions_and_each_instances_bento(aws: boto3.Session, archive: Path,
                                                                      tmp_path: Path) -> None:
    deployment_id = deploy(aws, archive, FleetSize(1, 3), instance_type="t3.large")
    release = prepare_release(aws, deployment_id, new_archive(tmp_path, "bbt-v2"), "bbt:v2", "1.4.40",
                              Ec2Options())
    assert "MemoryMax=6963M" in release.user_data, "85% of the fleet's t3.large, not of the default type"
    roll_out(aws, deployment_id, release, **NO_WAIT)

    fleet = find_fleets(aws, deployment_id)[deployment_id]
    [instance] = fleet_instances(aws, fleet)
    lines = status_of(deployment_id)
    assert lines[0].split() == [deployment_id, "running", fleet.url]
    assert lines[1:] == [
        f"load balancer {fleet.url}",
        f"auto scaling group {deployment_id}: min 1  desired 1  max 3",
        f"instance {instance.instance_id} InService healthy bbt:v2",
        "launch template version 2 bbt:v2 (current)",
        f"launch template version 1 bbt:v1 (rollback: `bbt deploy rollback {deployment_id}`)",
        *lines[6:]]
    assert all(line.startswith(("security group", "archive", "bucket", "IAM role")) for line in lines[6:])

    result = CliRunner().invoke(app, ["deploy", "rollback", deployment_id])
    assert result.exit_code == 0 and f"{deployment_id} serves launch template version 3" in result.output
    assert "launch template version 3 bbt:v1 (current)" in status_of(deployment_id)


def status_of(deployment_id: str) -> list[str]:
    """The lines `bbt deploy status` prints for one deployment, its header first."""
    result = CliRunner().invoke(app, ["deploy", "status", "--no-probe"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(f"{deployment_id}  "))
    end = next((n for n in range(start + 1, len(lines)) if not lines[n].startswith("  ")), len(lines))
    return [lines[start]] + [line.strip() for line in lines[start + 1:end]]


def test_a_rollout_moves_every_instance_to_the_new_version_and_rollback_brings_the_old(
        aws: boto3.Session, archive: Path, tmp_path: Path) -> None:
    deployment_id = deploy(aws, archive, FleetSize(2, 4))
    url = find_deployments(aws)[deployment_id].url
    old_ids = {i["InstanceId"] for i in find_fleets(aws, deployment_id)[deployment_id].group["Instances"]}
    probed: list[tuple[str, dict[str, str]]] = []
    release = prepare_release(aws, deployment_id, new_archive(tmp_path, "bbt-v2"), "bbt:v2", "1.4.40",
                              Ec2Options())

    def probe(probed_url: str) -> bool:
        """What the load balancer sends requests to while the probe runs."""
        target_group = find_fleets(aws, deployment_id)[deployment_id].target_group_arn
        described = aws.client("elbv2").describe_target_health(TargetGroupArn=target_group)
        probed.append((probed_url, {d["Target"]["Id"]: d["TargetHealth"]["State"]
                                    for d in described["TargetHealthDescriptions"]}))
        return True

    assert roll_out(aws, deployment_id, release, probe=probe, **NO_WAIT) == 2

    [(probed_url, serving)] = probed
    assert probed_url == url, "the probe runs once, through the load balancer"
    assert len(serving) == 2 and not old_ids & set(serving) and set(serving.values()) == {"healthy"}, \
        "the probe sees the new version alone"
    assert bentos_served(aws, deployment_id) == ["bbt:v2", "bbt:v2"]
    fleet = find_fleets(aws, deployment_id)[deployment_id]
    assert fleet.template_version == 2 and fleet.url == url, "same load balancer, same URL"
    assert not old_ids & {i["InstanceId"] for i in fleet.group["Instances"]}
    assert (fleet.group["DesiredCapacity"], fleet.group["MaxSize"]) == (2, 4), "sizes as before the surge"
    assert fleet.group.get("SuspendedProcesses", []) == []
    # The instances' role may read the new archive (and the old one, for a rollback).
    policy = aws.client("iam").get_role_policy(RoleName=deployment_id, PolicyName="read-archive")["PolicyDocument"]
    assert len(policy["Statement"][0]["Resource"]) == 2
    assert release.archive_uri.rsplit("/", 1)[-1] == "bbt-v2.bento"

    assert roll_back(aws, deployment_id, **NO_WAIT) == 3
    assert bentos_served(aws, deployment_id) == ["bbt:v1", "bbt:v1"]
    versions = template_versions(aws.client("ec2"), find_fleets(aws, deployment_id)[deployment_id])
    assert [(v.number, v.bento_tag, v.current) for v in versions] == [
        (3, "bbt:v1", True), (2, "bbt:v2", False), (1, "bbt:v1", False)]


@pytest.mark.parametrize("failure", ["probe", "probe-raises", "unhealthy"])
def test_a_failed_rollout_leaves_the_old_version_serving(aws: boto3.Session, archive: Path, tmp_path: Path,
                                                         failure: str) -> None:
    deployment_id = deploy(aws, archive, FleetSize(2, 4))
    before = find_fleets(aws, deployment_id)[deployment_id]
    old_ids = sorted(i["InstanceId"] for i in before.group["Instances"])
    release = prepare_release(aws, deployment_id, new_archive(tmp_path, "bbt-broken"), "bbt:broken", "1.4.40",
                              Ec2Options())
    def new_instances_never_healthy(line: str) -> None:
        """The new instances never pass /readyz: the load balancer holds them out of its targets (moto reports
        every registered running instance healthy, so they leave the target group here)."""
        if "launched" in line:
            target_group = find_fleets(aws, deployment_id)[deployment_id].target_group_arn
            aws.client("elbv2").deregister_targets(TargetGroupArn=target_group, Targets=[
                {"Id": i, "Port": 80} for i in re.findall(r"i-[0-9a-f]+", line)])

    with pytest.raises(RolloutFailed, match=r"rollout of bbt:broken .* stopped: .*keeps serving bbt:v1 "
                                            r"\(launch template version 1\)"):
        if failure == "probe":
            roll_out(aws, deployment_id, release, probe=lambda url: False, **NO_WAIT)
        elif failure == "probe-raises":
            roll_out(aws, deployment_id, release, probe=unreachable, **NO_WAIT)
        else:
            roll_out(aws, deployment_id, release, timeout_s=0, echo=new_instances_never_healthy, sleep=lambda _: None)

    after = find_fleets(aws, deployment_id)[deployment_id]
    assert after.template_version == 1, "the ASG launches the old version again"
    assert sorted(i["InstanceId"] for i in after.group["Instances"]) == old_ids, "the old instances still serve"
    assert bentos_served(aws, deployment_id) == ["bbt:v1", "bbt:v1"]
    assert [i.health for i in fleet_instances(aws, after)] == ["healthy", "healthy"]
    assert (after.group["DesiredCapacity"], after.group["MaxSize"]) == (2, 4)
    assert after.group.get("SuspendedProcesses", []) == []


def unreachable(url: str) -> bool:
    raise ConnectionError(f"{url} does not answer")


def test_destroy_removes_the_fleet_and_nothing_else(aws: boto3.Session, archive: Path, tmp_path: Path) -> None:
    ec2 = aws.client("ec2")
    # Someone else's load balancer, target group, template and single-instance deployment must survive, as must
    # the other tests' fleets in this shared account.
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    elbv2 = aws.client("elbv2")
    elbv2.create_load_balancer(Name="other", Subnets=subnets)
    elbv2.create_target_group(Name="other", Protocol="HTTP", Port=80, VpcId=vpc)
    ec2.create_launch_template(LaunchTemplateName="other", LaunchTemplateData={"ImageId": some_ami(aws)})
    single = deploy_ec2(archive, "bbt:v1", "1.4.40", Ec2Options(ami=some_ami(aws)), aws,
                        wait_ready=lambda url, timeout: None, echo=lambda _: None).deployment_id
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="team-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="team-artifacts", Key="keep/me.txt", Body=b"x")
    deployment_id = deploy(aws, archive, FleetSize(2, 4), bucket="team-artifacts")
    release = prepare_release(aws, deployment_id, new_archive(tmp_path, "bbt-v2"), "bbt:v2", "1.4.40", Ec2Options())
    roll_out(aws, deployment_id, release, **NO_WAIT)
    fleet = find_fleets(aws, deployment_id)[deployment_id]
    instance_ids = [i["InstanceId"] for i in fleet.group["Instances"]]
    before = everything(aws)
    ours = {"groups": {deployment_id}, "balancers": {deployment_id}, "target groups": {deployment_id},
            "templates": {deployment_id}, "security groups": {deployment_id, f"{deployment_id}-alb"},
            "deployments": {deployment_id}}
    assert all(ours[kind] <= before[kind] for kind in ours)

    removed = destroy(aws, deployment_id)

    assert {f"auto scaling group {deployment_id}", f"load balancer {deployment_id}",
            f"launch template {fleet.launch_template_id}", f"IAM role {deployment_id}"} <= set(removed)
    assert everything(aws) == {kind: before[kind] - ours[kind] for kind in before}
    assert {"other", single} <= everything(aws)["balancers"] | everything(aws)["deployments"]
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(InstanceIds=instance_ids)[
        "Reservations"] for i in r["Instances"]}
    assert set(states.values()) == {"terminated"}
    assert destroy(aws, deployment_id) == []
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="team-artifacts")["Contents"]] == ["keep/me.txt"], \
        "both bentos it shipped are gone from a bucket it did not create, the bucket's own objects stay"


def everything(session: boto3.Session) -> dict[str, set[str]]:
    """The names of every ASG, load balancer, target group, launch template, security group and deployment."""
    ec2, elbv2 = session.client("ec2"), session.client("elbv2")
    return {
        "groups": {g["AutoScalingGroupName"] for g in
                   session.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]},
        "balancers": {b["LoadBalancerName"] for b in elbv2.describe_load_balancers()["LoadBalancers"]},
        "target groups": {g["TargetGroupName"] for g in elbv2.describe_target_groups()["TargetGroups"]},
        "templates": {t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]},
        "security groups": {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]},
        "deployments": set(find_deployments(session)),
    }


def test_fleet_sizes_and_options_it_cannot_take_are_refused_clearly() -> None:
    with pytest.raises(DeployError, match=r"--min 3 --max 2: need 1 <= min <= max"):
        FleetSize(3, 2)
    with pytest.raises(DeployError, match="--min 0"):
        FleetSize(0, 1)
    result = CliRunner().invoke(app, ["deploy", "ec2", "--min", "3", "--max", "2", "--bento", "bbt:x",
                                      "--region", "eu-west-1"])
    assert result.exit_code == 2 and "need 1 <= min <= max" in result.output and "Traceback" not in result.output
    for extra, said in ((["--https", "--domain", "bbt.example.org"], "needs an ACM certificate"),
                        (["--subnet-id", "subnet-0abc"], "the load balancer needs two zones")):
        result = CliRunner().invoke(app, ["deploy", "ec2", "--bento", "bbt:x", "--region", "eu-west-1", *extra])
        assert result.exit_code == 2 and said in result.output and "--single" in result.output, result.output


def test_nginx_accepts_the_site_behind_a_load_balancer(tmp_path: Path) -> None:
    site = SiteSettings.for_service(load_params().serve, trusted_proxies=("172.31.0.0/16", "10.0.0.0/8"))
    assert "test is successful" in check_nginx_config(write_nginx_config(tmp_path, site))
    assert "set_real_ip_from" not in render_site(SiteSettings()), "a single instance trusts no forwarded address"


def test_a_release_takes_production_only_when_its_smoke_test_passes_there(aws: boto3.Session, archive: Path,
                                                                           tmp_path: Path) -> None:
    """`bbt release --deployment`'s production step: the same smoke test, through the load balancer, gates the
    switch; a version that fails it there leaves the old one serving, and the release stops with the report."""
    from bbt.release.fleet import roll_out_with
    from bbt.release.smoke import Check, SmokeReport
    from bbt.release.steps import ReleaseStopped

    deployment_id = deploy(aws, archive, FleetSize(1, 2))
    url = find_fleets(aws, deployment_id)[deployment_id].url
    checked: list[str] = []

    def smoke(passed: bool) -> Callable[[str], SmokeReport]:
        def check(probed: str) -> SmokeReport:
            checked.append(probed)
            return SmokeReport(probed, "8", [Check("actors named right", passed, "38 of 38" if passed else "9 of 38")])
        return check

    roll_out = roll_out_with(None, None, **NO_WAIT)
    with pytest.raises(ReleaseStopped, match="version 9 did not take production's traffic") as stopped:
        roll_out(deployment_id, new_archive(tmp_path, "bbt-9"), "bbt:v9", "9", smoke(False))
    assert stopped.value.report is not None and not stopped.value.report.passed
    assert bentos_served(aws, deployment_id) == ["bbt:v1"]
    roll_out(deployment_id, new_archive(tmp_path, "bbt-8"), "bbt:v8", "8", smoke(True))
    assert bentos_served(aws, deployment_id) == ["bbt:v8"]
    assert checked and all(probed.startswith(url.rstrip("/")) for probed in checked)
