"""dvc.yaml is honest: each stage declares exactly the params.yaml keys its code reads and the project files it
reads, and every bbt module whose functions it calls (bbt.reads records them while the stage runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import Project, reads_folder

pytestmark = pytest.mark.integration

# Modules every command runs that cannot change what a stage produces.
EXEMPT_MODULES = {
    "bbt/cli.py",  # dispatches to the stage function
    "bbt/cli_support.py",  # turns the errors a user can cause into messages
    "bbt/config.py",  # parses params.yaml: the values a stage reads are declared key by key as params
    "bbt/errors.py",  # exception classes
    "bbt/pipeline/progress.py",  # progress bars
    "bbt/reads.py",  # this recording
}
# Read by a stage but not declarable: DVC refuses a .dvc file as a dependency. It only feeds MLflow tags (the data
# hash), and the data itself reaches every stage through clean's declared data/raw and annotations.
UNDECLARABLE = {"data.dvc"}
# The MLflow, BentoML and Prefect stores (in the project in these tests): where register's side effect goes, and
# what it reads back (its own logged model), not inputs of the pipeline.
STORES = ("mlruns/", "bentoml/", "prefect/")
# clean's per-photo detection cache: found by the photo's content hash, the settings and the detection code's
# own hash (bbt/pipeline/detection_cache.py), so it can save work but never change a product (tests/test_clean.py).
CACHES = ("artifacts/cache/",)


def declared(stage: dict, params: dict) -> tuple[set[str], set[str]]:
    """(params keys, dependency paths) of one dvc.yaml stage; a bare section name means all its keys."""
    keys = set()
    for entry in stage.get("params", []):
        keys |= {f"{entry}.{k}" for k in params[entry]} if isinstance(params.get(entry), dict) else {entry}
    return keys, set(stage.get("deps", []))


def outputs(stage: dict) -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o for kind in ("outs", "metrics", "plots")
            for o in stage.get(kind, [])}


def covered(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def recorded(folder: Path, stage: str) -> dict[str, set] | None:
    """What `bbt <stage>` read as recorded in `folder`, its worker processes included; None if it did not run."""
    parts = sorted(folder.glob(f"{stage}.*.json"))
    if not parts:
        return None
    merged: dict[str, set] = {"params": set(), "modules": set(), "files": set()}
    for part in parts:
        for key, values in json.loads(part.read_text()).items():
            merged[key] |= set(values)
    return merged


def record(project: Project, stage: str, command: str, tmp_path: Path, **env: str) -> dict[str, set]:
    """What the session's `dvc repro` recorded for a stage; a stage it skipped (its products came out as
    committed) is run here (its dvc.yaml `command`), with the recording on."""
    found = recorded(reads_folder(project), stage)
    if found is not None:
        return found
    project.run(*command.split(), env_extra={"BBT_RECORD_READS": str(tmp_path / "reads"), **env}, timeout=600)
    found = recorded(tmp_path / "reads", stage)
    assert found is not None, f"bbt {stage} recorded nothing"
    return found


def test_every_stage_declares_what_it_reads(trained_project: Project, tmp_path: Path) -> None:
    pipeline = yaml.safe_load((trained_project.root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((trained_project.root / "params.yaml").read_text())
    # register reads the most when it registers: give it an empty MLflow and BentoML store of its own.
    fresh = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db", "BENTOML_HOME": str(tmp_path / "bento")}
    problems = []
    for name, stage in pipeline.items():
        read = record(trained_project, name, stage["cmd"], tmp_path, **(fresh if name == "register" else {}))
        keys, deps = declared(stage, params)
        if set(read["params"]) != keys:
            problems.append(f"{name}: params read but not declared {sorted(set(read['params']) - keys)}, "
                            f"declared but not read {sorted(keys - set(read['params']))}")
        # Code may be declared that this data's path did not run (features.py when the pixel features win).
        modules = set(read["modules"]) - EXEMPT_MODULES
        declared_code = {d for d in deps if d.startswith("bbt/")}
        if not modules <= declared_code:
            problems.append(f"{name}: code run but not declared {sorted(modules - declared_code)}")
        files = {f for f in read["files"] if not f.startswith((".venv/", ".git/", ".dvc/", *STORES, *CACHES)) and
                 not f.endswith(".py") and f != "params.yaml" and f not in UNDECLARABLE}
        data_deps = deps - declared_code
        unread = {d for d in data_deps if not any(covered(f, {d}) for f in files)}
        undeclared = {f for f in files if not covered(f, data_deps | outputs(stage))}
        if undeclared or unread:
            problems.append(f"{name}: files read but not declared {sorted(undeclared)}, declared but not read "
                            f"{sorted(unread)}")
    assert not problems, "\n".join(problems)
