"""`bbt deploy ec2 --min N --max M`: the bento on an Auto Scaling Group behind an Application Load Balancer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import boto3

from bbt.deploy import DeployError
from bbt.deploy.aws import aws_errors, aws_session
from bbt.deploy.ec2 import (
    Deployment,
    Ec2Options,
    _roll_back,
    _vpc_of,
    find_deployments,
    instance_memory_mib,
    new_deployment_id,
    resolve_ami,
)
from bbt.deploy.fleet import (
    FleetSize,
    Release,
    client,
    create_fleet_security_groups,
    create_group,
    create_launch_template,
    create_load_balancer,
    default_subnets,
    find_fleets,
    group_of,
    template_data,
    wait_healthy,
)
from bbt.deploy.iam import create_instance_role
from bbt.deploy.instances import MemoryLimits
from bbt.deploy.render import Archive, SiteSettings, render_user_data
from bbt.deploy.s3 import ship_archive

log = logging.getLogger(__name__)


def render_release(session: boto3.Session, deployment_id: str, bento_tag: str, bentoml_version: str,
                   bucket: str, key: str, options: Ec2Options, memory: MemoryLimits, vpc_id: str) -> Release:
    """The user data that makes an instance serve `bento_tag` from s3://bucket/key (plain HTTP behind the ALB,
    which connects from inside the VPC)."""
    with aws_errors(f"looking up VPC {vpc_id}"):
        [vpc] = client(session, "ec2").describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    site = SiteSettings.for_service(options.serve, trusted_proxies=(vpc["CidrBlock"],))
    user_data = render_user_data(deployment_id, bento_tag, Archive(bucket, key, session.region_name),
                                 bentoml_version, site, memory=memory, keep_feedback=options.keep_feedback)
    return Release(bento_tag, f"s3://{bucket}/{key}", user_data)


def memory_limits(ec2, options: Ec2Options) -> MemoryLimits:
    if options.memory_max_mib:
        return MemoryLimits.of_max(options.memory_max_mib)
    return MemoryLimits.for_instance(instance_memory_mib(ec2, options.instance_type))


def check_fleet_options(options: Ec2Options) -> None:
    """What a fleet cannot take (yet), said before anything is built."""
    if options.https:
        raise DeployError("--https with the load balancer needs an ACM certificate, which bbt does not manage yet: "
                          "deploy without --https, or add --single for one instance with Let's Encrypt")
    if options.subnet_id:
        raise DeployError("--subnet-id picks one subnet; the load balancer needs two zones: drop it (the default "
                          "VPC's subnets are used), or add --single")


def deploy_fleet(archive: Path, bento_tag: str, bentoml_version: str, options: Ec2Options,
                 size: FleetSize | None = None, session: boto3.Session | None = None,
                 echo: Callable[[str], None] = log.info, wait: bool = True,
                 sleep: Callable[[float], None] | None = None) -> Deployment:
    """Groups, archive, role, launch template, target group, ALB, ASG; wait for healthy targets; the deployment.

    If a step before the ASG exists fails, whatever was created is removed again.
    """
    size = size or FleetSize()
    check_fleet_options(options)
    session = session or aws_session(options.region, options.profile)
    if not archive.is_file():
        raise DeployError(f"{archive} is not a file: export a bento first (`bentoml export TAG PATH`)")
    deployment_id = new_deployment_id()
    ec2, elbv2 = client(session, "ec2"), client(session, "elbv2")
    echo(f"deployment {deployment_id} in {session.region_name}: {size.minimum} to {size.maximum} instance(s) "
         "behind a load balancer")
    image = resolve_ami(session, options.ami)
    memory = memory_limits(ec2, options)
    if options.key_name:
        with aws_errors(f"looking up key pair {options.key_name!r}"):
            ec2.describe_key_pairs(KeyNames=[options.key_name])
    try:
        with aws_errors("creating the security groups"):
            vpc_id = _vpc_of(ec2, None)
            subnets = default_subnets(ec2, vpc_id)
            alb_group, instance_group = create_fleet_security_groups(ec2, deployment_id, vpc_id, False,
                                                                     options.ssh_cidr)
        with aws_errors("uploading the bento to S3"):
            bucket, key = ship_archive(session, deployment_id, archive, options.bucket, instance_group)
        echo(f"bento {bento_tag} uploaded to s3://{bucket}/{key}")
        with aws_errors("creating the instances' IAM role (read access to the archive only)"):
            profile = create_instance_role(session, deployment_id, bucket, key)
        release = render_release(session, deployment_id, bento_tag, bentoml_version, bucket, key, options, memory,
                                 vpc_id)
        with aws_errors("creating the launch template"):
            data = template_data(image, options.instance_type, instance_group, profile, options.key_name,
                                 options.volume_gb, deployment_id, release)
            template_id, version = create_launch_template(ec2, deployment_id, data, release)
        with aws_errors("creating the load balancer"):
            _, target_group, _ = create_load_balancer(elbv2, deployment_id, vpc_id, subnets, alb_group)
        with aws_errors("creating the auto scaling group"):
            create_group(client(session, "autoscaling"), deployment_id, template_id, version, size, subnets,
                         target_group)
    except BaseException:
        _roll_back(session, deployment_id, echo)
        raise
    fleet = find_fleets(session, deployment_id)[deployment_id]
    echo(f"load balancer {fleet.url}: waiting for {size.minimum} healthy target(s) "
         "(cloud-init installs Python, the bento and nginx: ~5-10 min)")
    if wait:
        ids = [i["InstanceId"] for i in group_of(session, deployment_id)["Instances"]]
        try:
            wait_healthy(session, fleet, ids, options.ready_timeout_s, **({"sleep": sleep} if sleep else {}))
        except DeployError as err:
            raise DeployError(f"{err}; the fleet keeps running (and costing): remove it with "
                              f"`bbt deploy destroy {deployment_id}`") from None
        echo(f"ready: {fleet.url}")
    return find_deployments(session, deployment_id)[deployment_id]
