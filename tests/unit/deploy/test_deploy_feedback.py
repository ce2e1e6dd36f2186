"""Public deployments keep no feedback unless the deployer opts in (--keep-feedback), although the bento carries
the project's params.yaml, which keeps it for `make run`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bbt.cli import app
from bbt.config import load_params
from bbt.deploy.render import HostLayout, render_unit
from bbt.deploy.staging import service_environment
from bbt.review.feedback import FEEDBACK_DIR_ENV, feedback_folder, open_store

REPO = Path(__file__).resolve().parents[3]


def unit_environment(unit: str) -> dict[str, str]:
    """The service's environment as systemd reads the unit's Environment= lines."""
    pairs = (line.removeprefix("Environment=").split("=", 1) for line in unit.splitlines()
             if line.startswith("Environment="))
    return dict(pairs)


def test_the_project_keeps_feedback_so_the_bento_would_too() -> None:
    """The premise: without the deployment's say, the bento's params.yaml would keep feedback."""
    assert feedback_folder(load_params(REPO / "params.yaml").serve, {}, Path("/srv/bento/src")) is not None


def test_the_rendered_unit_keeps_no_feedback_by_default() -> None:
    environment = unit_environment(render_unit("bbt-actor-service:abc"))
    assert environment[FEEDBACK_DIR_ENV] == ""
    assert open_store(load_params(REPO / "params.yaml").serve, environment, Path("/srv/bento/src")) is None


def test_keep_feedback_puts_it_in_the_service_home_it_may_write() -> None:
    layout = HostLayout()
    unit = render_unit("bbt-actor-service:abc", layout, keep_feedback=True)
    folder = feedback_folder(load_params(REPO / "params.yaml").serve, unit_environment(unit))
    assert folder == Path(layout.feedback_dir) == Path("/var/lib/bbt/feedback")
    writable = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert folder.is_relative_to(writable.removeprefix("ReadWritePaths="))


@pytest.mark.parametrize("keep", [False, True])
def test_the_render_command_says_what_ec2_would_ship(tmp_path: Path, keep: bool) -> None:
    flags = ["--keep-feedback"] if keep else []
    result = CliRunner().invoke(app, ["deploy", "render", str(tmp_path), "--bento", "bbt-actor-service:abc", *flags])
    assert result.exit_code == 0, result.output
    expected = "/var/lib/bbt/feedback" if keep else ""
    assert unit_environment((tmp_path / "bbt.service").read_text())[FEEDBACK_DIR_ENV] == expected
    files = {f["path"]: f for f in yaml.safe_load((tmp_path / "user-data.yaml").read_text())["write_files"]}
    assert unit_environment(files["/etc/systemd/system/bbt.service"]["content"])[FEEDBACK_DIR_ENV] == expected


def test_staging_keeps_no_feedback_unless_asked(tmp_path: Path) -> None:
    serve = load_params(REPO / "params.yaml").serve
    assert open_store(serve, service_environment(tmp_path / "bentoml"), tmp_path) is None
    kept = open_store(serve, service_environment(tmp_path / "bentoml", tmp_path / "feedback"), tmp_path)
    assert kept is not None and kept.folder == tmp_path / "feedback"


def test_systemd_accepts_the_unit_that_keeps_feedback(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make system-deps` installs systemd"
    layout = HostLayout(home=str(tmp_path))
    Path(layout.venv, "bin").mkdir(parents=True)
    Path(layout.venv, "bin", "bentoml").symlink_to(Path(sys.executable).parent / "bentoml")
    unit = tmp_path / "bbt.service"
    unit.write_text(render_unit("bbt-actor-service:abc123", layout, keep_feedback=True))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
