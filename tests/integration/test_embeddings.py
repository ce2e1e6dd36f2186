"""The face-embedding transformer on real faces: what it is for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bbt.vision.embeddings import FaceEmbeddings
from bbt.vision.faces import Box, crop_face
from bbt.vision.images import decode_image
from tests.conftest import Project

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

pytestmark = pytest.mark.integration


def test_faces_of_one_actor_are_closer_than_faces_of_different_actors(pulled_project: Project) -> None:
    data = pulled_project.root / "data"
    reviews = pd.read_csv(data / "annotations.csv")
    accepted = reviews[reviews.review == "accepted"].sort_values("image")
    chosen = pd.concat([accepted[accepted.label == actor].head(6) for actor in ACTORS])
    crops = np.stack([
        crop_face(decode_image((data / "raw" / row.image).read_bytes(), name=row.image),
                  Box(row.x, row.y, row.w, row.h), 128)
        for row in chosen.itertuples()
    ])
    labels = chosen.label.to_numpy()
    X = FaceEmbeddings().transform(crops)
    distance = np.linalg.norm(X[:, None] - X[None], axis=-1)
    same = labels[:, None] == labels[None]
    np.fill_diagonal(same, False)
    different = labels[:, None] != labels[None]
    assert distance[same].mean() < distance[different].mean() - 0.15
    np.fill_diagonal(distance, np.inf)
    nearest = labels[distance.argmin(axis=1)]
    assert (nearest == labels).mean() >= 0.9
