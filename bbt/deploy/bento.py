"""Build, export and import bentos with the `bentoml` CLI, each against an explicit BENTOML_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bbt.deploy import DeployError

TAG_PREFIX = "__tag__:"


def bentoml_executable() -> str:
    """The `bentoml` next to this interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "bentoml"
    if beside.exists():
        return str(beside)
    found = shutil.which("bentoml")
    if found is None:
        raise DeployError("the `bentoml` command is not installed: run `make setup` (uv sync) first")
    return found


def _bentoml(args: list[str], bentoml_home: Path | None, cwd: Path | None = None,
             timeout: float = 600) -> str:
    env = dict(os.environ)
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    result = subprocess.run([bentoml_executable(), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise DeployError(f"`bentoml {' '.join(args)}` failed (exit {result.returncode}):\n"
                          f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def build_bento(project: Path, bentoml_home: Path | None = None) -> str:
    """`bentoml build` from the project's bentofile.yaml; returns the bento tag (name:version)."""
    if not (project / "bentofile.yaml").exists():
        raise DeployError(f"{project / 'bentofile.yaml'} is missing: run this from the bbt project root")
    output = _bentoml(["build", "--output", "tag"], bentoml_home, cwd=project)
    tags = [line.strip()[len(TAG_PREFIX):] for line in output.splitlines() if line.strip().startswith(TAG_PREFIX)]
    if not tags:
        raise DeployError(f"`bentoml build` printed no tag:\n{output[-2000:]}")
    return tags[-1]


def export_bento(tag: str, archive: Path, bentoml_home: Path | None = None) -> Path:
    """`bentoml export`: one self-contained archive (code, locked requirements, model) for another machine."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    _bentoml(["export", tag, str(archive)], bentoml_home)
    return archive


def import_bento(archive: Path, bentoml_home: Path) -> None:
    """`bentoml import` into a (fresh) store, as the instance does after downloading the archive."""
    bentoml_home.mkdir(parents=True, exist_ok=True)
    _bentoml(["import", str(archive)], bentoml_home)
