"""The lines `bbt deploy status` prints for a fleet: sizes, each instance's health and bento, the versions."""

from __future__ import annotations

import boto3

from bbt.deploy.fleet import Fleet, client, fleet_instances, template_versions


def fleet_lines(session: boto3.Session, fleet: Fleet) -> list[str]:
    lines = []
    if fleet.load_balancer:
        lines.append(f"load balancer {fleet.url}")
    if fleet.group:
        group = fleet.group
        lines.append(f"auto scaling group {fleet.deployment_id}: min {group['MinSize']}  "
                     f"desired {group['DesiredCapacity']}  max {group['MaxSize']}")
    for instance in fleet_instances(session, fleet):
        lines.append(f"instance {instance.instance_id} {instance.state} {instance.health} "
                     f"{instance.bento_tag or '(bento unknown)'}")
    for version in template_versions(client(session, "ec2"), fleet):
        role = ("current" if version.current
                else f"rollback: `bbt deploy rollback {fleet.deployment_id}`" if version.number
                < (fleet.template_version or 0) else "not served")
        lines.append(f"launch template version {version.number} {version.bento_tag or '-'} ({role})")
    return lines
