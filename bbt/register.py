"""Stage `register`: log the chosen pipeline as an MLflow model and move the alias only if it is no worse."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import asdict, replace

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from bbt import artifacts
from bbt.bento_store import import_version
from bbt.config import Params, RegisterParams, load_params
from bbt.evaluate import load_model, score, test_faces
from bbt.tracking import corrections_hash, data_hash, git_commit, setup_tracking

log = logging.getLogger(__name__)


# What loading the pipeline imports; pinning them beats MLflow's slow guess from the whole environment.
RUNTIME_PACKAGES = ("scikit-learn", "numpy", "scipy", "opencv-python-headless", "pywavelets", "skops", "dlib-bin",
                    "face-recognition-models", "onnx", "onnxruntime")


def model_requirements() -> list[str]:
    found = []
    for package in RUNTIME_PACKAGES:
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def training_params_hash(params: Params) -> str:
    """A hash of the params that decide the trained model (not the worker count, not serving)."""
    decisive = {"data": asdict(params.data), "clean": asdict(replace(params.clean, workers=1)),
                "featurize": asdict(params.featurize), "split": asdict(params.split), "search": asdict(params.search)}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def skops_trusted_types(model: object) -> list[str]:
    """The types skops does not trust by default that the pipeline holds: bbt's transformers and the private
    helpers of scikit-learn itself (e.g. the calibrated SVM's `_CalibratedClassifier`); nothing else."""
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return sorted(name for name in found if name.startswith(("bbt.", "sklearn.")))


def current_champion(client: MlflowClient, params: RegisterParams) -> str | None:
    try:
        return client.get_model_version_by_alias(params.model_name, params.alias).version
    except MlflowException:
        return None


def run_register(params: RegisterParams, trained_with: Params | None = None) -> dict:
    """Register the model; promote it to the alias when its test macro-F1 >= the champion's on this split.

    `trained_with` are the params the model was made with (default params.yaml), tagged as a hash.
    """
    model, info = load_model()
    crops, labels = test_faces()
    new = score(model, crops, labels)
    setup_tracking()
    client = MlflowClient()
    with mlflow.start_run(run_id=info["search_run_id"]):
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(crops[:2], model.predict(crops[:2])),
            input_example=crops[:1],
            registered_model_name=params.model_name,
            pip_requirements=model_requirements(),
            skops_trusted_types=skops_trusted_types(model),
            metadata={"detector": info["detector"], "crop_size": info["crop_size"],
                      "classes": info["classes"], "candidate": info["candidate"]},
        )
    version = str(logged.registered_model_version)
    for key, value in {"test_f1_macro": f"{new['f1_macro']:.4f}", "test_accuracy": f"{new['accuracy']:.4f}",
                       "candidate": info["candidate"], "feature_set": info["feature_set"],
                       "data_hash": data_hash(), "git_commit": git_commit(),
                       "corrections_hash": corrections_hash((trained_with or load_params()).data.corrections),
                       "params_hash": training_params_hash(trained_with or load_params())}.items():
        client.set_model_version_tag(params.model_name, version, key, value)

    champion = current_champion(client, params)
    if champion is None:
        promote, reason = True, f"no {params.alias} yet"
    else:
        # Re-score the champion on today's test split: scores from another split are not comparable.
        old = score(mlflow.sklearn.load_model(f"models:/{params.model_name}/{champion}"), crops, labels)
        promote = new["f1_macro"] >= old["f1_macro"]
        relation = ">=" if promote else "<"
        reason = (f"test macro-F1 {new['f1_macro']:.4f} {relation} {params.alias} version {champion}'s "
                  f"{old['f1_macro']:.4f} on the same test split")
    if promote:
        client.set_registered_model_alias(params.model_name, params.alias, version)
        import_version(params.model_name, version)
        log.info("register: version %s is now @%s (%s)", version, params.alias, reason)
    else:
        log.warning("register: version %s registered without @%s: %s", version, params.alias, reason)
    result = {"version": int(version), "champion": promote, "champion_version": int(version if promote else champion),
              "test_f1_macro": new["f1_macro"], "test_accuracy": new["accuracy"], "reason": reason}
    artifacts.REGISTER_METRICS.parent.mkdir(parents=True, exist_ok=True)
    artifacts.REGISTER_METRICS.write_text(json.dumps(result, indent=2) + "\n")
    return result
