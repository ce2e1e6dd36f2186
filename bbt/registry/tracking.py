"""The MLflow store: SQLite metadata and file artifacts under mlruns/ unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import mlflow
import yaml

STORE = Path("mlruns")
DEFAULT_TRACKING_URI = f"sqlite:///{STORE}/mlflow.db"
# register's DVC output inside the default store: it goes when mlruns/ is wiped, so `dvc repro` registers again.
# Its content follows from the inputs only (dvc.lock records its hash); a store elsewhere (MLFLOW_TRACKING_URI)
# is out of DVC's sight, and `bbt register` restores it.
REGISTERED_MARK = STORE / "registered.json"
EXPERIMENT = "bbt-actor-classifier"
# A model's identity in MLflow: the md5 of artifacts/model/model.joblib, tagged on the run that made it and on
# its registry versions. Nothing machine-specific (run ids, version numbers) is written into DVC outputs.
MODEL_MD5_TAG = "model_md5"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def artifact_root(uri: str) -> str | None:
    """Artifacts sit beside a SQLite store (mlruns/artifacts); other stores choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def setup_tracking(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store, creating it and the experiment if needed; returns the experiment id."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment)
        return found.experiment_id
    experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_root(uri))
    mlflow.set_experiment(experiment)
    return experiment_id


def git_commit() -> str:
    """The checked-out commit, with '-dirty' when tracked files changed; 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def data_hash(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 of the dataset version that data.dvc points to."""
    try:
        return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def corrections_hash(path: Path) -> str:
    """The md5 of the second review file, so a corrected label is a new training input like new data."""
    try:
        return hashlib.md5(path.read_bytes()).hexdigest()
    except OSError:
        return "none"


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def model_run_id(model_md5: str) -> str:
    """The newest run tagged with this model's md5 (the search run that made it); a new run when the store has
    none (a wiped mlruns/, another tracking server), so the model can be scored and registered again."""
    setup_tracking()
    found = mlflow.search_runs(filter_string=f"tags.{MODEL_MD5_TAG} = '{model_md5}'",
                               order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    with mlflow.start_run(run_name=f"model-{model_md5[:8]}") as run:
        mlflow.set_tags({MODEL_MD5_TAG: model_md5, "stage": "register",
                         "note": "the search run that made this model is not in this store"})
        return run.info.run_id
