"""Stage `register`: log the chosen model to MLflow's registry and move the alias only if it is no worse."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import platform
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import cv2
import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from bbt import UNKNOWN, artifacts
from bbt.config import Params, RegisterParams
from bbt.errors import ModelError
from bbt.model.candidates import FAMILIES
from bbt.model.feature_sets import FEATURE_SETS
from bbt.model.photo_model import PHOTO_MODEL_CODE, load_pipeline
from bbt.model.predict import PIPELINE_ARTIFACT
from bbt.monitoring.reference import METADATA_KEY, reference_on_test_split
from bbt.pipeline.evaluate import load_model, score, test_faces
from bbt.registry.bento_store import import_version
from bbt.registry.model_cards import has_card, write_card
from bbt.registry.tracking import (
    MODEL_MD5_TAG,
    REGISTERED_MARK,
    corrections_hash,
    data_hash,
    file_md5,
    git_commit,
    model_run_id,
    setup_tracking,
)
from bbt.vision.faces import DETECTORS

log = logging.getLogger(__name__)


# What loading the pipeline imports: the base, and what each registered family, feature set and detector says
# it needs. Pinning them beats MLflow's slow guess from the whole environment.
BASE_PACKAGES = ("scikit-learn", "numpy", "scipy", "skops", "opencv-python-headless")
RUNTIME_PACKAGES = tuple(dict.fromkeys([
    *BASE_PACKAGES,
    *(p for family in FAMILIES.values() for p in family.packages),
    *(p for feature_set in FEATURE_SETS.values() for p in feature_set.packages),
    *(p for detector in DETECTORS.values() for p in detector.packages),
]))


def model_requirements() -> list[str]:
    found = []
    for package in RUNTIME_PACKAGES:
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def model_conda_env() -> dict:
    """The logged model's environment, given whole. Given only pip requirements, MLflow asks the installed pip
    for its version to write conda.yaml, and warns on every log: a uv environment has no pip."""
    return {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [f"python={platform.python_version()}", "pip", {"pip": model_requirements()}]}


def training_params_hash(params: Params) -> str:
    """A hash of the params that decide the trained model (not the worker count, not serving)."""
    clean = {f.name: getattr(params.clean, f.name) for f in fields(params.clean) if f.name != "workers"}
    decisive = {"cast": list(params.cast), "data": asdict(params.data), "clean": clean,
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
        return str(client.get_model_version_by_alias(params.model_name, params.alias).version)
    except MlflowException:
        return None


def registered_version(client: MlflowClient, model_name: str, model_md5: str) -> str | None:
    """The registry version that holds this very model file, if it was registered before."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.tags.get(MODEL_MD5_TAG) == model_md5]
    return str(max(int(v.version) for v in same)) if same else None


def promotion(new: dict, old: dict | None, alias: str, champion: str | None,
              faces: str = "today's test split") -> tuple[bool, str]:
    """Move the alias only to a model no worse on either count, both scored on today's test split (`faces`
    says which part of it, when the champion trained on some of it): actor macro-F1 (unknown = wrong) and the
    share of strangers given an actor's name."""
    if old is None:
        return True, f"there was no @{alias}"
    promote = new["actor_f1"] >= old["actor_f1"] and new["false_accept_rate"] <= old["false_accept_rate"]
    verdict = "no worse" if promote else "worse"
    return promote, (f"{verdict} than {alias} version {champion} on {faces}: actor macro-F1 "
                     f"{new['actor_f1']:.4f} vs {old['actor_f1']:.4f}, strangers given a name "
                     f"{new['false_accept_rate']:.4f} vs {old['false_accept_rate']:.4f}")


def faces_it_trained_on(model: object, crops: np.ndarray) -> np.ndarray:
    """Which crops are among a model's training faces: its gallery holds its actors' training embeddings, so a
    face embedded where a gallery face sits was one of them (a split made another way puts such faces in today's
    test split). None for a model without a gallery."""
    gallery = getattr(model, "gallery", None)
    if gallery is None or not len(crops):
        return np.zeros(len(crops), dtype=bool)
    embeddings = model.embedder.transform(crops)
    return np.linalg.norm(embeddings[:, None, :] - gallery[None, :, :], axis=2).min(axis=1) < 1e-4


def people_gate(new: dict, old: dict, alias: str, champion: str | None, added: list[str], f1_noise: float,
                far_noise: float, cv_people: dict) -> tuple[bool, str]:
    """`promotion` for a model that knows people the champion does not: scored on the faces of the people both know
    and the strangers, it may fall short of the champion by its CV noise (`f1_noise`: the std of its fold macro-F1;
    `far_noise`: one stranger face of the test split), no more. The new people's own CV figures are reported."""
    promote = (new["actor_f1"] >= old["actor_f1"] - f1_noise
               and new["false_accept_rate"] <= old["false_accept_rate"] + far_noise)
    figures = "; ".join(f"{p}: CV recall {cv_people[p]['recall']:.3f}, precision {cv_people[p]['precision']:.3f} "
                        f"({cv_people[p]['faces']} training faces"
                        + (f"; {n} stranger face(s) as close as theirs, see the search's warning"
                           if (n := cv_people[p].get("strangers_as_close", 0)) else "") + ")"
                        for p in added if p in cv_people)
    verdict = "no worse" if promote else "worse"
    return promote, (f"new people {', '.join(added)} ({figures}); on the people both know, {verdict} than {alias} "
                     f"version {champion} within CV noise: macro-F1 {new['actor_f1']:.4f} vs {old['actor_f1']:.4f} "
                     f"(noise {f1_noise:.4f}), strangers given a name {new['false_accept_rate']:.4f} vs "
                     f"{old['false_accept_rate']:.4f} (noise {far_noise:.4f})")


def compare_with_champion(model: object, champion_model: object, crops: np.ndarray, labels: np.ndarray,
                          new: dict, info: dict, alias: str, champion: str) -> tuple[bool, str]:
    """The gate, on the test faces the champion did not train on (one from another split would be judged on its
    own training faces): `promotion` when both models name the same people, else `people_gate` on the people
    both know."""
    unseen = ~faces_it_trained_on(champion_model, crops)
    if not unseen.all():
        crops, labels = crops[unseen], labels[unseen]
        new = score(model, crops, labels)
    faces = ("today's test split" if unseen.all()
             else f"the {int(unseen.sum())} faces of today's test split version {champion} did not train on")
    known, theirs = set(map(str, model.classes_)), set(map(str, champion_model.classes_))  # type: ignore[attr-defined]
    if known == theirs:
        return promotion(new, score(champion_model, crops, labels), alias, champion, faces)
    keep = np.isin(labels, [*sorted(known & theirs), UNKNOWN])
    strangers = int((labels[keep] == UNKNOWN).sum())
    return people_gate(score(model, crops[keep], labels[keep]), score(champion_model, crops[keep], labels[keep]),
                       alias, champion, sorted(known - theirs), float(info.get("cv_f1_macro_std", 0.0)),
                       1 / strangers if strangers else 0.0, info.get("cv_per_person", {}))


def log_and_register(model: object, info: dict, model_md5: str, crops: np.ndarray, model_name: str) -> str:
    """Log the photo model (bbt.model.photo_model), with the pipeline inside it, to the run that made the
    pipeline (or a new run, in a store that lacks it) and register it."""
    metadata = {"detector": info["detector"], "crop_size": info["crop_size"], "classes": info["classes"],
                "candidate": info["candidate"], "open_set": info["open_set"],
                METADATA_KEY: reference_on_test_split(model).as_metadata()}
    with tempfile.TemporaryDirectory() as folder:
        pipeline = Path(folder) / PIPELINE_ARTIFACT
        mlflow.sklearn.save_model(
            model, str(pipeline),
            signature=infer_signature(crops[:2], model.predict(crops[:2])),
            conda_env=model_conda_env(),
            skops_trusted_types=skops_trusted_types(model),
            metadata=metadata,
        )
        with mlflow.start_run(run_id=model_run_id(model_md5)), warnings.catch_warnings():
            # The photo model's answers are JSON objects (dict[str, Any]), and MLflow warns that it cannot validate
            # Any. A filter would not do: log_model puts its own "once" filter in front of every UserWarning.
            warnings.showwarning = without_any_type_hint_warning(warnings.showwarning)
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=PHOTO_MODEL_CODE,
                artifacts={PIPELINE_ARTIFACT: str(pipeline)},
                input_example=[example_photo(crops[0])],
                registered_model_name=model_name,
                conda_env=model_conda_env(),
                metadata=metadata,
            )
    return str(logged.registered_model_version)


def without_any_type_hint_warning(show: Callable[..., None]) -> Callable[..., None]:
    """`warnings.showwarning` less MLflow's "Any type hint is inferred as AnyType" (see `log_and_register`)."""
    def filtered(message: Warning | str, *args: object, **kwargs: object) -> None:
        if "Any type hint is inferred as AnyType" not in str(message):
            show(message, *args, **kwargs)
    return filtered


def example_photo(crop: np.ndarray) -> bytes:
    """A photo for the model's input example: a held-out test face, as a PNG file's bytes."""
    encoded, data = cv2.imencode(".png", crop)
    if not encoded:
        raise ModelError("could not encode a test face as PNG for the model's input example")
    return data.tobytes()


def run_register(params: Params) -> dict:
    """Register artifacts/model unless the registry already holds it; move the alias when it is no worse than
    the champion (`promotion`). Idempotent: after a wiped MLflow store it registers the same model again."""
    model, info = load_model()
    model_md5 = file_md5(artifacts.MODEL)
    setup_tracking()
    client = MlflowClient()
    name, alias = params.register.model_name, params.register.alias
    version = registered_version(client, name, model_md5)
    champion = current_champion(client, params.register)
    needs_card = version is None or not has_card(client, name, version)
    new: dict = {}
    if version is None or champion != version or needs_card:
        crops, labels = test_faces()
        new = score(model, crops, labels)
    registered_now = version is None
    if version is None:
        version = log_and_register(model, info, model_md5, crops, name)
        tags = {MODEL_MD5_TAG: model_md5, "candidate": info["candidate"], "feature_set": info["feature_set"],
                "open_set_rule": info["open_set"]["rule"], "open_set_threshold": f"{info['open_set']['threshold']:.4f}",
                "test_actor_f1": f"{new['actor_f1']:.4f}", "test_actor_accuracy": f"{new['actor_accuracy']:.4f}",
                "test_false_accept_rate": f"{new['false_accept_rate']:.4f}",
                "data_hash": data_hash(), "git_commit": git_commit(),
                "corrections_hash": corrections_hash(params.data.corrections),
                "params_hash": training_params_hash(params)}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    if needs_card:  # a new version, or one registered before cards existed: this file is its model
        write_card(client, params, version, info, model_md5, new, training_params_hash(params))
    if champion == version:
        promote, reason = False, f"version {version} (this model) is already @{alias}"
    else:
        if champion is None:
            promote, reason = promotion(new, None, alias, champion)
        else:
            promote, reason = compare_with_champion(model, load_pipeline(f"models:/{name}/{champion}"), crops,
                                                    labels, new, info, alias, champion)
    if promote:
        client.set_registered_model_alias(name, alias, version)
    message = outcome(name, version, alias, registered_now, champion, promote, reason)
    (log.info if promote or champion == version else log.warning)("register: %s", message)
    champion_version = version if promote else champion
    if champion_version == version:
        import_version(name, version)
    write_records({"model_name": name, "model_md5": model_md5, "candidate": info["candidate"]})
    return {"version": int(version), "champion": champion_version == version,
            "champion_version": int(champion_version) if champion_version else None, "reason": reason}


def outcome(name: str, version: str, alias: str, registered_now: bool, champion: str | None, promote: bool,
            reason: str) -> str:
    """What register did, in one true sentence: whether it registered, and where the alias points now."""
    held = "registered as" if registered_now else "already in the registry as"
    if champion == version:
        return f"{name} {reason}"
    if champion is None:
        return f"{name} {held} version {version}, now @{alias} (there was none)"
    if promote:
        return f"{name} {held} version {version}, now @{alias}: {reason}"
    return f"{name} {held} version {version}; @{alias} stays version {champion}: {reason}"


def write_records(record: dict) -> None:
    """reports/register.json (what the release stage releases), and the same in the store's folder: an output
    that goes with a wiped mlruns/, so that `dvc repro` registers again (bbt.registry.tracking.REGISTERED_MARK).
    Only what follows from the inputs: version numbers belong to one MLflow store."""
    for path in (artifacts.REGISTER_REPORT, REGISTERED_MARK):
        artifacts.write_json(path, record)


def run_write_card(params: Params, version: str) -> str:
    """`bbt card --write VERSION`: (re)write the card of a version whose model is the one in artifacts/model."""
    model, info = load_model()
    model_md5 = file_md5(artifacts.MODEL)
    setup_tracking()
    client = MlflowClient()
    name = params.register.model_name
    try:
        held = client.get_model_version(name, str(version)).tags.get(MODEL_MD5_TAG)
    except MlflowException:
        raise ModelError(f"{name} version {version} is not in the MLflow registry: give a registered version") \
            from None
    if held != model_md5:
        raise ModelError(f"{name} version {version} holds the model with md5 {held}, artifacts/model holds "
                         f"{model_md5}: a card describes its own model's data and params, so check out the commit "
                         f"in the version's git_commit tag and `dvc checkout` first, then `bbt card --write {version}`")
    crops, labels = test_faces()
    return write_card(client, params, str(version), info, model_md5, score(model, crops, labels),
                      training_params_hash(params))
