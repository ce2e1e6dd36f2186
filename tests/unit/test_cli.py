"""The `bbt` command as a user meets it: clear errors, exit code 2, no traceback.

One test runs the real entry point in a fresh interpreter; the others call the same Typer app in-process, as a
fresh `python -m bbt` importing MLflow costs 5-10 s each on 2 cores (the unit tier has a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner, Result

from bbt.cli import app

BBT = [sys.executable, "-m", "bbt"]


@pytest.fixture(autouse=True)
def project_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Commands run in an empty folder with an MLflow store of their own; MLflow's process-wide URIs come back."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield tmp_path
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def run(*args: str) -> Result:
    """`bbt ARGS` in-process, in the test's folder; an exception escaping the command is a test failure."""
    result = CliRunner().invoke(app, list(args), prog_name="bbt")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_the_command_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The real entry point in a fresh interpreter: what a shell sees."""
    result = subprocess.run([*BBT, "clean"], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # one line: no traceback, no log
    assert line.startswith("error: data/raw not found: run `dvc pull data.dvc`")


def test_clean_without_data_tells_to_pull() -> None:
    result = run("clean")
    assert result.exit_code == 2
    assert "data/raw not found: run `dvc pull data.dvc`" in result.stderr


def test_bad_params_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("clean:\n  min_neighbours: 5\n")
    result = run("clean")
    assert result.exit_code == 2 and "clean.min_neighbours" in result.stderr


def test_search_before_featurize_names_the_stage() -> None:
    result = run("search")
    assert result.exit_code == 2 and "dvc repro clean" in result.stderr


def test_leaderboard_on_an_empty_store() -> None:
    result = run("leaderboard")
    assert result.exit_code == 2 and "run `dvc repro` (or" in result.stderr and "--force --single-item search" in result.stderr


def test_audit_before_featurize_names_the_stage() -> None:
    result = run("audit")
    assert result.exit_code == 2 and "run `dvc repro featurize`" in result.stderr


def test_pull_without_the_remote_folder_says_so_in_one_line(tmp_path: Path) -> None:
    """Issue 12: `dvc pull` from a missing local remote buried the reason in its log."""
    # What `dvc init --no-scm` and `dvc remote add -d store ../no-such-store` write (two DVC processes cost ~3 s).
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    no_scm = True\n    remote = store\n"
                                          "['remote \"store\"']\n    url = ../../no-such-store\n")
    result = run("pull")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [(
        f"error: the DVC remote 'store' is the folder {tmp_path.parent / 'no-such-store'}, which does not exist: "
        "put the shared dataset store there (../shared/dvc-store beside the project), or point the remote at it "
        "with `dvc remote modify --local store url <folder>`")]


def test_card_on_an_empty_store_says_there_is_no_champion() -> None:
    result = run("card")
    assert result.exit_code == 2
    assert "models:/bbt-actor-classifier@champion does not exist" in result.output


def test_card_write_needs_the_version() -> None:
    result = run("card", "--write")
    assert result.exit_code == 2 and "needs the VERSION" in result.output


def test_card_write_before_search_names_the_stage() -> None:
    result = run("card", "--write", "3")
    assert result.exit_code == 2 and "run `dvc repro search`" in result.output
