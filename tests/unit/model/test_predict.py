"""Where a registered model is read from: an MLflow URI is downloaded, a folder is read as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.model.predict import is_uri


@pytest.mark.parametrize("location", ["models:/bbt-actor-classifier@champion", "models:/bbt-actor-classifier/3",
                                      "runs:/0a1b2c/model", "s3://bucket/models/m-1", "file:///srv/model"])
def test_an_mlflow_uri_is_downloaded(location: str) -> None:
    assert is_uri(location)


@pytest.mark.parametrize("location", ["artifacts/model", "/srv/models/m-1/artifacts", "./models:/x", "C:model",
                                      Path("models:/bbt-actor-classifier@champion")])
def test_a_folder_is_read_as_it_is(location: str | Path) -> None:
    assert not is_uri(location)
