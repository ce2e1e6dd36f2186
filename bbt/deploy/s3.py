"""The S3 bucket that carries the exported bento: private, encrypted at rest, reachable over TLS only."""

from __future__ import annotations

import json
from pathlib import Path

import boto3

from bbt.deploy.aws import ARCHIVE_TAG, TAG_KEY, tags


def tls_only_policy(bucket: str, partition: str = "aws") -> dict:
    """A bucket policy refusing every request that does not come over HTTPS."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyPlainHttp", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def create_bucket(session: boto3.Session, bucket: str, deployment_id: str) -> None:
    """A new bucket: public access blocked, SSE-S3 (AES-256) by default, TLS-only, tagged with the deployment."""
    s3 = session.client("s3")
    location = {} if session.region_name == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": session.region_name}}
    s3.create_bucket(Bucket=bucket, **location)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    partition = session.get_partition_for_region(session.region_name)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(tls_only_policy(bucket, partition)))
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags(deployment_id)})


def upload_archive(session: boto3.Session, deployment_id: str, archive: Path, bucket: str) -> str:
    """Put the exported bento under `bbt/<deployment>/` in the bucket, tagged; returns its key."""
    key = f"bbt/{deployment_id}/{archive.name}"
    session.client("s3").upload_file(str(archive), bucket, key, ExtraArgs={"Tagging": f"{TAG_KEY}={deployment_id}"})
    return key


def delete_bucket(s3, bucket: str) -> None:
    """Every version of every object, then the bucket."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
    s3.delete_bucket(Bucket=bucket)


def ship_archive(session: boto3.Session, deployment_id: str, archive: Path, bucket: str | None,
                 remembered_by: str) -> tuple[str, str]:
    """Upload the bento archive, into a new private bucket of the deployment unless `bucket` is given; tag the
    EC2 resource `remembered_by` (a security group: it outlives instances) with where the archive is, for
    `destroy`. Returns (bucket, key)."""
    if bucket is None:
        bucket = f"{deployment_id}-{session.client('sts').get_caller_identity()['Account']}"
        create_bucket(session, bucket, deployment_id)
    key = upload_archive(session, deployment_id, archive, bucket)
    session.client("ec2").create_tags(Resources=[remembered_by],
                                      Tags=[{"Key": ARCHIVE_TAG, "Value": f"s3://{bucket}/{key}"}])
    return bucket, key
