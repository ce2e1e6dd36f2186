"""The production step of `bbt release`: roll a staged bento out to a fleet (bbt/deploy/rollout.py), gated by the
same smoke test, through the load balancer, that passed in staging."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbt.config import load_params
from bbt.deploy.aws import aws_session
from bbt.deploy.ec2 import Ec2Options
from bbt.deploy.rollout import RolloutFailed, prepare_release, roll_back, roll_out
from bbt.errors import ModelError
from bbt.release.smoke import SmokeReport


def roll_out_with(region: str | None, profile: str | None, **waiting: Any) -> Callable[..., None]:
    """bbt.release.steps.RollOut for the fleets of one AWS account and region (`waiting`: roll_out's timeout_s, poll_s,
    sleep, echo). A release keeps no feedback on the public fleet (`bbt deploy ec2 --keep-feedback` is the
    deployer's own, explicit choice)."""

    def run(deployment: str, archive: Path, bento_tag: str, version: str,
            check: Callable[[str], SmokeReport]) -> None:
        import bentoml

        session = aws_session(region, profile)
        release = prepare_release(session, deployment, archive, bento_tag, bentoml.__version__,
                                  Ec2Options(region=region, profile=profile, serve=load_params().serve))
        reports: list[SmokeReport] = []

        def probe(url: str) -> bool:
            reports.append(check(url))
            return reports[-1].passed

        try:
            roll_out(session, deployment, release, probe=probe, **waiting)
        except RolloutFailed as err:
            from bbt.release.steps import ReleaseStopped

            raise ReleaseStopped(f"version {version} did not take production's traffic on {deployment}: {err}",
                                 reports[-1] if reports else None) from None

    return run


def roll_back_with(region: str | None, profile: str | None) -> Callable[[str, str], None]:
    """The rollback of a fleet to the version it served before (its previous launch template version)."""

    def run(deployment: str, version: str) -> None:
        try:
            roll_back(aws_session(region, profile), deployment)
        except RolloutFailed as err:
            raise ModelError(f"rolling {deployment} back to version {version} failed, it keeps what it serves: "
                             f"{err}") from None

    return run
