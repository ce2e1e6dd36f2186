"""`bbt deploy ...`: ship the bento to EC2, show and remove deployments, run the local staging copy."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from bbt.cli_support import friendly
from bbt.deploy.instances import DEFAULT_INSTANCE_TYPE

deploy_app = typer.Typer(help="Ship the bento to AWS EC2 behind nginx, or run the same setup locally (staging).",
                         no_args_is_help=True)

REGION = typer.Option(None, help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config).")
PROFILE = typer.Option(None, help="AWS profile from ~/.aws/config (default: AWS_PROFILE or the default one).")
RENDER_OUT = typer.Argument(..., help="Folder for the rendered files (e.g. /tmp/bbt-rendered).")
KEEP_FEEDBACK = typer.Option(False, help="Keep the photos users report wrong and agree to let the service keep "
                                         "(POST /feedback). Off by default: a public server keeps no photo.")


@deploy_app.command("ec2")
@friendly
def ec2(
    region: str = REGION,
    profile: str = PROFILE,
    instance_type: str = typer.Option(DEFAULT_INSTANCE_TYPE,
                                      help="EC2 instance type; the service may use 85% of its RAM (MemoryMax)."),
    ami: str = typer.Option(None, help="AMI id (default: the latest Debian 12 amd64 image of the region)."),
    key_name: str = typer.Option(None, help="EC2 key pair for SSH (default: none, no SSH login)."),
    ssh_cidr: str = typer.Option(None, help="Open SSH (22) to this CIDR only, e.g. 203.0.113.7/32."),
    https: bool = typer.Option(False, help="Serve HTTPS on 443 with a Let's Encrypt certificate for --domain; "
                                           "HTTP redirects to it."),
    domain: str = typer.Option(None, help="The domain name for --https (point its DNS A record at the instance)."),
    bucket: str = typer.Option(None, help="Existing S3 bucket for the archive (default: a new private one)."),
    subnet_id: str = typer.Option(None, help="Public subnet to launch in (default: the default VPC)."),
    bento: str = typer.Option(None, help="Ship this bento tag (e.g. the one staging ran) instead of building."),
    ready_timeout: float = typer.Option(1200, help="Seconds to wait for /readyz through the public address."),
    wait: bool = typer.Option(True, help="Wait for /readyz; --no-wait returns once the instance runs."),
    keep_feedback: bool = KEEP_FEEDBACK,
    minimum: int = typer.Option(1, "--min", help="Fewest instances behind the load balancer."),
    maximum: int = typer.Option(1, "--max", help="Most instances: the ASG adds them when CPU passes its target."),
    single: bool = typer.Option(False, help="One instance with its own address and no load balancer (what --https "
                                            "with Let's Encrypt and --subnet-id need); no rollouts, no scaling."),
) -> None:
    """Build and export the bento, upload it to S3, serve it from an Auto Scaling Group behind a load balancer
    (or --single instance) with nginx on each instance; print the URL."""
    import bentoml

    from bbt.config import load_params
    from bbt.deploy.bento import build_bento, export_bento
    from bbt.deploy.ec2 import Ec2Options, aws_session, deploy_ec2
    from bbt.deploy.fleet import FleetSize
    from bbt.deploy.fleet_deploy import check_fleet_options, deploy_fleet

    size = None if single else FleetSize(minimum, maximum)
    options = Ec2Options(region=region, profile=profile, instance_type=instance_type, ami=ami, key_name=key_name,
                         ssh_cidr=ssh_cidr, https=https, domain=domain, bucket=bucket, subnet_id=subnet_id,
                         serve=load_params().serve, ready_timeout_s=ready_timeout, keep_feedback=keep_feedback)
    if size is not None:
        check_fleet_options(options)
    session = aws_session(region, profile)  # fail on credentials/region before the slow build
    tag = bento or build_bento(Path.cwd())
    with tempfile.TemporaryDirectory(prefix="bbt-export-") as folder:
        archive = export_bento(tag, Path(folder) / f"{tag.replace(':', '-')}.bento")
        if size is None:
            deployment = deploy_ec2(archive, tag, bentoml.__version__, options, session, echo=typer.echo,
                                    wait_ready=None if wait else lambda url, timeout: None)
        else:
            deployment = deploy_fleet(archive, tag, bentoml.__version__, options, size, session, echo=typer.echo,
                                      wait=wait)
    typer.echo(f"{deployment.public_url}  (deployment {deployment.deployment_id}; "
               f"remove it with `bbt deploy destroy {deployment.deployment_id}`)")


@deploy_app.command()
@friendly
def status(region: str = REGION, profile: str = PROFILE,
           probe: bool = typer.Option(True, help="Ask each instance's /readyz (5 s timeout).")) -> None:
    """List the bbt deployments of the region: instance state, URL, readiness and what they own."""
    from bbt.deploy.ec2 import aws_session, find_deployments
    from bbt.deploy.fleet import find_fleets
    from bbt.deploy.fleet_status import fleet_lines
    from bbt.serving.ready import probe as probe_url

    session = aws_session(region, profile)
    deployments = find_deployments(session)
    fleets = find_fleets(session)
    if not deployments:
        typer.echo("no bbt deployments in this region")
    for deployment in deployments.values():
        ready = ""
        if probe and deployment.url:
            answer = probe_url(f"{deployment.url}readyz")
            ready = "  ready" if answer == 200 else f"  not ready ({answer or 'no answer'})"
        typer.echo(f"{deployment.deployment_id}  {deployment.state}  {deployment.public_url or '-'}{ready}")
        if deployment.deployment_id in fleets:  # its instances with their health and bento, its versions
            for line in fleet_lines(session, fleets[deployment.deployment_id]):
                typer.echo(f"  {line}")
        else:
            for instance in deployment.instances:
                typer.echo(f"  instance {instance['InstanceId']} {instance['InstanceType']} {instance['ImageId']}")
        for group in deployment.security_groups:
            typer.echo(f"  security group {group}")
        for archive in deployment.archives:
            typer.echo(f"  archive {archive}")
        for bucket in deployment.buckets:
            typer.echo(f"  bucket s3://{bucket}")
        for role in deployment.roles:
            typer.echo(f"  IAM role {role}")


@deploy_app.command()
@friendly
def destroy(
    deployment_id: str = typer.Argument(None, help="The deployment to remove (default: the only one)."),
    region: str = REGION,
    profile: str = PROFILE,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove exactly what `bbt deploy ec2` created for one deployment, found by its tag."""
    from bbt.deploy import DeployError
    from bbt.deploy.ec2 import aws_session, find_deployments
    from bbt.deploy.ec2 import destroy as destroy_deployment

    session = aws_session(region, profile)
    known = find_deployments(session)
    if deployment_id is None:
        if not known:
            raise DeployError(f"no bbt deployments in {session.region_name}: nothing to remove")
        if len(known) > 1:
            raise DeployError(f"{len(known)} bbt deployments in {session.region_name} ({', '.join(known)}): "
                              "name the one to remove, e.g. `bbt deploy destroy ID`")
        deployment_id = next(iter(known))
    if deployment_id not in known:
        raise DeployError(f"no resources tagged bbt:deployment={deployment_id} in {session.region_name}: "
                          "see `bbt deploy status` (and --region)")
    if not yes:
        typer.confirm(f"Remove deployment {deployment_id} (instance, security group, IAM role, archive)?", abort=True)
    removed = destroy_deployment(session, deployment_id)
    typer.echo(f"removed {deployment_id}: {', '.join(removed)}")


@deploy_app.command()
@friendly
def rollback(
    deployment_id: str = typer.Argument(..., help="The fleet deployment (see `bbt deploy status`)."),
    region: str = REGION,
    profile: str = PROFILE,
    timeout: float = typer.Option(1200, help="Seconds to wait for the new instances to pass /readyz."),
) -> None:
    """Serve the launch template version before the current one again, by a rollout (the URL stays)."""
    from bbt.deploy.ec2 import aws_session
    from bbt.deploy.rollout import roll_back

    version = roll_back(aws_session(region, profile), deployment_id, timeout_s=timeout, echo=typer.echo)
    typer.echo(f"{deployment_id} serves launch template version {version}")


@deploy_app.command()
@friendly
def staging(
    port: int = typer.Option(8080, help="Loopback port nginx listens on (plain HTTP)."),
    https: bool = typer.Option(False, help="Also serve HTTPS with a self-signed certificate, as EC2 with --https; "
                                           "HTTP then redirects to it."),
    https_port: int = typer.Option(8443, help="Loopback port for HTTPS (with --https)."),
    bento: str = typer.Option(None, help="Stage this bento tag instead of building one from bentofile.yaml."),
    keep: bool = typer.Option(False, help="Keep the work folder (archive, store, logs) after stopping."),
    keep_feedback: bool = typer.Option(False, help="Keep the photos users report wrong (POST /feedback) in the "
                                                   "work folder's feedback/ (with --keep to find them after)."),
) -> None:
    """Run the staging copy: the exported bento imported into a fresh store, behind nginx on 127.0.0.1:PORT."""
    import shutil
    import threading

    from bbt.config import load_params
    from bbt.deploy.shutdown import sigterm_as_interrupt
    from bbt.deploy.staging import run_staging

    workdir = Path(tempfile.mkdtemp(prefix="bbt-staging-"))
    typer.echo(f"building, exporting and importing the bento in {workdir} ...")
    try:
        with sigterm_as_interrupt(), run_staging(Path.cwd(), workdir, port=port, bento_tag=bento,
                                                 serve=load_params().serve, tls=https,
                                                 https_port=https_port, keep_feedback=keep_feedback) as running:
            if running.certificate:
                typer.echo(f"self-signed certificate {running.certificate} (curl --cacert it); "
                           f"{running.http_url}/ redirects to HTTPS")
            typer.echo(f"staging {running.bento_tag} on {running.url}/ (nginx -> {running.service_url}); "
                       "Ctrl-C (or SIGTERM) stops it")
            typer.echo(f"feedback kept in {running.feedback_dir}" if running.feedback_dir
                       else "feedback off (--keep-feedback turns it on)")
            threading.Event().wait()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@deploy_app.command()
@friendly
def render(
    out: Path = RENDER_OUT,
    bento: str = typer.Option("bbt:<version>", help="Bento tag to write into the unit and user-data."),
    instance_type: str = typer.Option(DEFAULT_INSTANCE_TYPE, help="Sets the unit's memory limits (85% of RAM)."),
    https: bool = typer.Option(False, help="Render the HTTPS setup (needs --domain)."),
    domain: str = typer.Option(None, help="The domain name for --https."),
    keep_feedback: bool = KEEP_FEEDBACK,
) -> None:
    """Write the nginx site, systemd unit and cloud-init user-data as `bbt deploy ec2` would, for review."""
    import bentoml

    from bbt.config import load_params
    from bbt.deploy import DeployError
    from bbt.deploy.ec2 import Ec2Options
    from bbt.deploy.instances import INSTANCE_MEMORY_MIB, MemoryLimits
    from bbt.deploy.render import (
        Archive,
        SiteSettings,
        TlsSettings,
        render_site,
        render_unit,
        render_user_data,
    )

    options = Ec2Options(https=https, domain=domain, instance_type=instance_type)
    if instance_type not in INSTANCE_MEMORY_MIB:
        raise DeployError(f"no memory figure for {instance_type} without AWS: use one of "
                          f"{', '.join(INSTANCE_MEMORY_MIB)} (`bbt deploy ec2` asks AWS for any other type)")
    memory = MemoryLimits.for_instance(INSTANCE_MEMORY_MIB[instance_type])
    site = SiteSettings.for_service(load_params().serve, server_name=options.domain or "_",
                                    tls=TlsSettings() if https else None)
    archive = Archive("<bucket>", "bbt/<deployment>/<bento>.bento", "<region>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bbt.conf").write_text(render_site(site))
    (out / "bbt.service").write_text(render_unit(bento, memory=memory, keep_feedback=keep_feedback))
    (out / "user-data.yaml").write_text(render_user_data("bbt-<deployment>", bento, archive, bentoml.__version__,
                                                         site, memory=memory, keep_feedback=keep_feedback))
    typer.echo(f"wrote {out}/bbt.conf, {out}/bbt.service, {out}/user-data.yaml")
