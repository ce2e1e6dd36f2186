"""The DVC remote the photos come from: a missing local remote is said in one line, before `dvc pull` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bbt.errors import DataError


def check_local_remote(root: Path = Path(".")) -> None:
    """DataError naming the folder and the fix when the default DVC remote is a local folder that is missing
    (a cloud remote is left to `dvc pull` to reach)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = config["core"].get("remote")
        if not name:
            raise DataError(f"{root / '.dvc/config'} names no default remote: `dvc remote default <name>`")
        url = str(config["remote"][name]["url"])
    if "://" in url:
        return
    if not Path(url).is_dir():  # DVC has made a relative folder absolute already
        raise DataError(f"the DVC remote '{name}' is the folder {url}, which does not exist: put the shared "
                        f"dataset store there (../shared/dvc-store beside the project), or point the remote at "
                        f"it with `dvc remote modify --local {name} url <folder>`")


def pull(root: Path = Path(".")) -> None:
    """`dvc pull` of data/, after checking the remote is there."""
    check_local_remote(root)
    result = subprocess.run([str(Path(sys.executable).with_name("dvc")), "pull", "data.dvc"], cwd=root,
                            check=False)
    if result.returncode:
        raise DataError(f"`dvc pull` failed (exit {result.returncode}; its message is above)")
