"""The instance's IAM role: it may read the one archive object and nothing else.

The instance gets the role's keys from its metadata service (IMDSv2), short-lived and rotated by AWS, so the
user-data carries no credentials and no bearer URL. IAM is global: roles record their region in a tag, so
`status` and `destroy` in one region leave other regions' deployments alone.
"""

from __future__ import annotations

import json

import boto3
import botocore.exceptions

from bbt.deploy.aws import error_code, tag_value, tags

ROLE_PATH = "/bbt/"
REGION_TAG = "bbt:region"
TRUST_EC2 = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def read_archive_policy(bucket: str, key: str, partition: str = "aws") -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:{partition}:s3:::{bucket}/{key}"}]}


def create_instance_role(session: boto3.Session, deployment_id: str, bucket: str, key: str) -> str:
    """A role and its instance profile, both named after the deployment; returns the profile's name."""
    iam = session.client("iam")
    partition = session.get_partition_for_region(session.region_name)
    iam.create_role(RoleName=deployment_id, Path=ROLE_PATH, AssumeRolePolicyDocument=json.dumps(TRUST_EC2),
                    Description=f"bbt deployment {deployment_id}: read its bento archive",
                    Tags=tags(deployment_id, **{REGION_TAG: session.region_name}))
    iam.put_role_policy(RoleName=deployment_id, PolicyName="read-archive",
                        PolicyDocument=json.dumps(read_archive_policy(bucket, key, partition)))
    iam.create_instance_profile(InstanceProfileName=deployment_id, Path=ROLE_PATH, Tags=tags(deployment_id))
    iam.add_role_to_instance_profile(InstanceProfileName=deployment_id, RoleName=deployment_id)
    return deployment_id


def find_roles(session: boto3.Session, deployment_id: str | None = None) -> dict[str, str]:
    """Deployment id -> role name, for the roles bbt made in this session's region."""
    iam = session.client("iam")
    found: dict[str, str] = {}
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=ROLE_PATH):
        for role in page["Roles"]:
            role_tags = iam.list_role_tags(RoleName=role["RoleName"])["Tags"]
            owner = tag_value(role_tags)
            if owner and tag_value(role_tags, REGION_TAG) == session.region_name and deployment_id in (None, owner):
                found[owner] = role["RoleName"]
    return found


def delete_instance_role(session: boto3.Session, role: str) -> None:
    """The role's instance profiles, its inline policies, then the role."""
    iam = session.client("iam")
    for profile in iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]:
        iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=role)
        iam.delete_instance_profile(InstanceProfileName=profile["InstanceProfileName"])
    try:  # a profile left without its role when a deployment failed half-way
        iam.delete_instance_profile(InstanceProfileName=role)
    except botocore.exceptions.ClientError as err:
        if error_code(err) != "NoSuchEntity":
            raise
    for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        iam.delete_role_policy(RoleName=role, PolicyName=policy)
    iam.delete_role(RoleName=role)
