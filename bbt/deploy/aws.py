"""The AWS session, the tags every deployment resource carries, and AWS errors as one clear line."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import boto3.exceptions
import botocore.exceptions
import botocore.loaders
import botocore.session

from bbt.deploy import DeployError

TAG_KEY = "bbt:deployment"
ARCHIVE_TAG = "bbt:archive"
# What a user can do about the AWS errors they are most likely to meet.
HINTS = {
    "AuthFailure": "the credentials are invalid: check `aws sts get-caller-identity`",
    "InvalidClientTokenId": "the access key is unknown: check `aws sts get-caller-identity`",
    "ExpiredToken": "the session token expired: log in again (`aws sso login` or new keys)",
    "UnauthorizedOperation": "the IAM user/role lacks EC2 permissions (ec2:RunInstances, security groups, tags)",
    "AccessDenied": "the IAM user/role lacks the S3/EC2/IAM permission named above (docs/deployment.md lists them)",
    "InstanceLimitExceeded": "the region's instance quota is used up: terminate instances or request more",
    "VcpuLimitExceeded": "the region's vCPU quota is used up: pick a smaller --instance-type or request more",
    "InvalidKeyPair.NotFound": "no key pair of that name in this region: create it or drop --key-name",
    "InvalidAMIID.NotFound": "no such AMI in this region: AMI ids differ per region; drop --ami for Debian 12",
    "InvalidAMIID.Malformed": "the --ami value is not an AMI id (ami-...)",
    "InvalidInstanceType": "no such instance type in this region: see `aws ec2 describe-instance-types`",
    "BucketAlreadyExists": "that bucket name belongs to another account: pick another --bucket",
    "InsufficientInstanceCapacity": "AWS has no capacity for that type now: try another --instance-type",
}


@functools.cache
def _service_models() -> botocore.loaders.Loader:
    """One loader per process: each session would otherwise parse botocore's service models (megabytes of JSON)
    again, and a fleet rollout or a test run opens many."""
    return botocore.loaders.create_loader()


def aws_session(region: str | None = None, profile: str | None = None) -> boto3.Session:
    """A boto3 session with a region and credentials, or a DeployError saying how to provide them."""
    loader = _service_models()
    try:
        core = botocore.session.Session(profile=profile)
        core.register_component("data_loader", loader)
        session = boto3.Session(botocore_session=core, region_name=region)
        region_name = session.region_name
    except botocore.exceptions.ProfileNotFound:
        raise DeployError(f"AWS profile {profile!r} is not in ~/.aws/config or ~/.aws/credentials: "
                          "create it with `aws configure --profile NAME` or drop --profile") from None
    loader.search_paths[:] = dict.fromkeys(loader.search_paths)  # boto3 appends its own folder per session
    if not region_name:
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
        code = error_code(err)
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


def error_code(err: botocore.exceptions.ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def tags(deployment_id: str, **extra: str) -> list[dict[str, str]]:
    """The tags `status` and `destroy` find a deployment's resources by."""
    return [{"Key": "Name", "Value": deployment_id}, {"Key": TAG_KEY, "Value": deployment_id},
            *({"Key": k, "Value": v} for k, v in extra.items())]


def tag_value(resource_tags: list[dict[str, str]], key: str = TAG_KEY) -> str | None:
    return next((t["Value"] for t in resource_tags if t["Key"] == key), None)
