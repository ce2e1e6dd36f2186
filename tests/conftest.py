"""Shared fixtures: a throw-away copy of the project, its data pulled from ../shared, trained once per session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bbt.serving.ready import NotReady, free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BBT_SHARED", REPO.parent / "shared"))
VENV_BIN = Path(sys.executable).parent
EXPECTATIONS = Path(__file__).with_name("data") / "expectations.yaml"


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

    def set_params(self, change: dict[str, dict]) -> None:
        """Change params.yaml's values, key by key within each section."""
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        for section, values in change.items():
            params[section].update(values)
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(self, *args: str, check: bool = True, timeout: float = 900,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the project, as a user would in a shell with the venv active (plus `env_extra`)."""
        result = subprocess.run(list(args), cwd=self.root, env={**self.env, **(env_extra or {})},
                                capture_output=True, text=True, timeout=timeout, check=False)
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


def pytest_itemcollected(item: pytest.Item) -> None:
    """For `pytest -n 2 --dist loadgroup` (make test): the tests on the session's trained project run on one
    worker, which trains once; each other data or integration module runs on one worker, which makes its module
    fixtures once; unit tests run wherever a worker is free. A long test marked `own_worker` runs apart: the
    trained-project group is the suite's longest, and the other worker, idle for half of it otherwise, trains once
    more for it. Without -n the groups change nothing. (Marked as each test is collected: xdist reads the groups in
    its own pytest_collection_modifyitems.)"""
    if item.get_closest_marker("own_worker"):
        group = item.nodeid
    elif "trained_project" in item.fixturenames:
        group = "trained-project"
    elif item.get_closest_marker("integration") or item.get_closest_marker("data"):
        group = item.module.__name__
    else:
        return
    item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def expected() -> dict:
    """The dataset's counts (tests/data/expectations.yaml), for the data and integration tiers."""
    return yaml.safe_load(EXPECTATIONS.read_text())


@pytest.fixture(scope="session")
def pulled_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project copy with the real dataset pulled from ../shared/dvc-store."""
    if not (SHARED / "dvc-store").is_dir():  # said once, not as an error of every test that needs data
        pytest.exit(f"the DVC remote {SHARED / 'dvc-store'} is missing: tests need ../shared beside the repo "
                    "(or BBT_SHARED pointing at it)", returncode=2)
    project = copy_project(tmp_path_factory.mktemp("project"))
    project.run("dvc", "pull", "-q", "data.dvc")
    return project


@pytest.fixture(scope="session")
def trained_project(pulled_project: Project) -> Project:
    """The pulled project after `make train` (`dvc repro`): champion registered and in BentoML. A fresh copy has no
    mlruns/, so register runs (its output mlruns/registered.json is missing); release's inputs come out as
    committed, so it is forced after it.

    Every stage records what it read (bbt/reads.py) into `reads_folder`, for tests/integration/test_dag.py."""
    record = {"BBT_RECORD_READS": str(reads_folder(pulled_project))}
    pulled_project.run("dvc", "repro", timeout=1200, env_extra=record)
    pulled_project.run("dvc", "repro", "--force", "--single-item", "release", env_extra=record)
    return pulled_project


def clone_trained_project(trained: Project, root: Path) -> Project:
    """A copy of the trained project (data, DVC cache, pipeline products) with MLflow, BentoML and Prefect stores
    of its own, its champion registered afresh from the products: for a test that changes data or the registry,
    which no other test may see."""
    shutil.copytree(trained.root, root, symlinks=True,
                    ignore=shutil.ignore_patterns("mlruns", "bentoml", "prefect", "*.log"))
    env = {**trained.env, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db",
           "BENTOML_HOME": str(root / "bentoml"), "PREFECT_HOME": str(root / "prefect")}
    clone = Project(root, env)
    clone.run("bbt", "register")
    return clone


# A retrain in a test searches the champion's own family and open-set rule only (6 candidates, not 56): what the
# test asks of the new model, at a tenth of the search.
CHAMPIONS_SEARCH = {"search": {"families": ["logistic_regression"], "open_set_rules": ["nearest_face"]}}


def reads_folder(project: Project) -> Path:
    """Where the trained project's `dvc repro` recorded what each stage read."""
    return project.root.parent / f"{project.root.name}-reads"


@dataclass
class Server:
    """A running `bbt serve` (the champion under `bentoml serve`) and the project it serves."""

    url: str
    process: subprocess.Popen
    project: Project
    log: Path


def start_server(project: Project, command: list[str], log: Path, cwd: Path | None = None,
                 ready_timeout: float = 240, ready_path: str = "/readyz") -> Server:
    """Start a server in its own process group on a free loopback port; return once `ready_path` answers 200."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd or project.root,
                                   env=project.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, project, log)
    try:
        wait_until_ready(f"{server.url}{ready_path}", ready_timeout, 0.5, alive=lambda: process.poll() is None,
                         what=" ".join(command))
    except NotReady as err:
        stop_server(server)
        pytest.fail(f"{err}:\n{log.read_text()[-3000:]}")
    return server


def stop_server(server: Server) -> None:
    """Stop the server and every process it started (its own process group)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def bento_server(trained_project: Project) -> Iterator[Server]:
    """`bbt serve` in the trained project: shared by the server and browser tests."""
    server = start_server(trained_project, ["bbt", "serve"], trained_project.root / "bbt-serve.log")
    yield server
    stop_server(server)
