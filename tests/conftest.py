"""Shared fixtures: a throw-away copy of the project, its data pulled from ../shared, trained once per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BBT_SHARED", REPO.parent / "shared"))
VENV_BIN = Path(sys.executable).parent


@dataclass
class Project:
    """A copy of the repository in a temporary folder, with its own DVC cache, MLflow and BentoML stores."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def bentoml_home(self) -> Path:
        return Path(self.env["BENTOML_HOME"])

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run a command in the project, as a user would in a shell with the venv active."""
        result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result


def copy_project(destination: Path) -> Project:
    """Copy the repository's files (tracked and new, not ignored) and make it a git + DVC project."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{destination}/mlruns/mlflow.db",
        "BENTOML_HOME": str(destination / "bentoml"),
        "PREFECT_HOME": str(destination / "prefect"),
    }
    project = Project(destination, env)
    git = ["git", "-c", "user.name=bbt tests", "-c", "user.email=tests@bbt.invalid"]
    project.run("git", "init", "-q")
    project.run(*git, "add", "-A")
    project.run(*git, "commit", "-qm", "test copy")
    project.run("dvc", "remote", "modify", "--local", "store", "url", str(SHARED / "dvc-store"))
    return project


@pytest.fixture(scope="session")
def pulled_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project copy with the real dataset pulled from ../shared/dvc-store."""
    if not (SHARED / "dvc-store").is_dir():
        pytest.fail(f"the DVC remote {SHARED / 'dvc-store'} is missing: tests need ../shared beside the repo "
                    "(or BBT_SHARED pointing at it)")
    project = copy_project(tmp_path_factory.mktemp("project"))
    project.run("dvc", "pull", "-q", "data.dvc")
    return project


@pytest.fixture(scope="session")
def trained_project(pulled_project: Project) -> Project:
    """The pulled project after a full `dvc repro`: champion registered and imported into BentoML."""
    pulled_project.run("dvc", "repro", timeout=1200)
    return pulled_project


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
