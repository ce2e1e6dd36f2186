"""The registered model as MLflow sees it: a pyfunc that takes photos and answers every face in each.

`mlflow.pyfunc.load_model("models:/bbt-actor-classifier@champion").predict([photo_bytes])` and
`mlflow models serve` run the service's own inference path (ActorClassifier: decode, detect with the training
detector settings, align, describe, the open-set rule, the width rule). The scikit-learn pipeline is an
artifact inside it, itself an MLflow sklearn model carrying the same metadata, so `register`'s champion
comparison and the monitoring reference load the pipeline alone (`load_pipeline`); the search and the audit
work on artifacts/model/ as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from bbt import MAX_PIXELS
from bbt.model.predict import PIPELINE_ARTIFACT, ActorClassifier, is_uri, pipeline_path
from bbt.vision.images import ImageError

# What `register` logs as the model's code (MLflow's models from code): it builds a PhotoModel when loaded.
PHOTO_MODEL_CODE = Path(__file__).with_name("photo_model_entry.py")


class PhotoModel(mlflow.pyfunc.PythonModel):
    """Photos in (encoded bytes: JPEG, PNG, WebP, GIF, ...), per photo its faces with box and answer out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = ActorClassifier.from_mlflow(context.artifacts[PIPELINE_ARTIFACT])
        self.classifier.warm_up()

    def predict(self, model_input: list[bytes], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One answer per photo, in order: {"faces": [...], "image": {"width", "height"}} with each face as
        /classify answers it, or {"error": why, "faces": []} for bytes that are not a usable photo."""
        answers: list[dict[str, Any]] = []
        for number, data in enumerate(model_input):
            try:
                faces, (width, height) = self.classifier.classify_bytes(data, f"photo {number}", MAX_PIXELS)
            except ImageError as err:
                answers.append({"error": str(err), "faces": []})
                continue
            answers.append({"faces": [face.as_dict() for face in faces],
                            "image": {"width": width, "height": height}})
        return answers


def load_classifier(model_uri: str | Path) -> ActorClassifier:
    """The ActorClassifier of a logged model (folder or models:/ URI), loaded as MLflow loads the photo model;
    a version logged before photo models (a plain sklearn flavor) is read directly."""
    local = Path(mlflow.artifacts.download_artifacts(str(model_uri))) if is_uri(model_uri) else Path(model_uri)
    if pipeline_path(local) == local:
        return ActorClassifier.from_mlflow(local)
    return mlflow.pyfunc.load_model(str(local)).unwrap_python_model().classifier


def load_pipeline(model_uri: str) -> Any:
    """The scikit-learn pipeline (an OpenSetClassifier) of a registered version, e.g. models:/name/3."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(str(pipeline_path(Path(mlflow.artifacts.download_artifacts(model_uri)))))
