"""The `bbt` command as a user meets it: clear errors, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BBT = [sys.executable, "-m", "bbt"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlruns/mlflow.db"}
    return subprocess.run([*BBT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_clean_without_data_tells_to_pull(tmp_path: Path) -> None:
    result = run("clean", cwd=tmp_path)
    assert result.returncode == 2
    assert "data/raw not found: run `dvc pull data.dvc`" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_params_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("clean:\n  min_neighbours: 5\n")
    result = run("clean", cwd=tmp_path)
    assert result.returncode == 2
    assert "clean.min_neighbours" in result.stderr and "Traceback" not in result.stderr


def test_search_before_featurize_names_the_stage(tmp_path: Path) -> None:
    result = run("search", cwd=tmp_path)
    assert result.returncode == 2 and "dvc repro clean" in result.stderr


def test_leaderboard_on_an_empty_store(tmp_path: Path) -> None:
    result = run("leaderboard", cwd=tmp_path)
    assert result.returncode == 2 and "run `dvc repro` first" in result.stderr


def test_audit_before_featurize_names_the_stage(tmp_path: Path) -> None:
    result = run("audit", cwd=tmp_path)
    assert result.returncode == 2 and "run `dvc repro featurize`" in result.stderr
    assert "Traceback" not in result.stderr


def test_pull_without_the_remote_folder_says_so_in_one_line(tmp_path: Path) -> None:
    """Issue 12: `dvc pull` from a missing local remote buried the reason in its log."""
    subprocess.run([Path(sys.executable).with_name("dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([Path(sys.executable).with_name("dvc"), "remote", "add", "-d", "store", "../no-such-store"],
                   cwd=tmp_path, check=True, capture_output=True)
    result = run("pull", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [(
        f"error: the DVC remote 'store' is the folder {tmp_path.parent / 'no-such-store'}, which does not exist: "
        "put the shared dataset store there (../shared/dvc-store beside the project), or point the remote at it "
        "with `dvc remote modify --local store url <folder>`")]
