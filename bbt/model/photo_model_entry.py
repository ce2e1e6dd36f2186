"""The photo model's code file for MLflow (models from code): `register` logs this file, and loading the model
runs it, so nothing is unpickled but the scikit-learn pipeline inside (bbt/model/photo_model.py)."""

import mlflow.models

from bbt.model.photo_model import PhotoModel

mlflow.models.set_model(PhotoModel())
