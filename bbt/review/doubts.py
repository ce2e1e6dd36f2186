"""The detections nobody reviewed that the champion answers "can't tell": a reviewer meets them first.

They are the faces the model needs a person for: too small or too blurred to judge, or at a distance where known
people and strangers overlap (the band). Each is answered from the review's cached descriptor and sharpness
(bbt.review.descriptors) by the champion's own rule (`OpenSetClassifier.decide_embedded`), so the queue agrees
with what the served page says of the same face.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bbt import CANT_TELL
from bbt.config import Params
from bbt.review.descriptors import describe_and_measure
from bbt.review.queue import unreviewed
from bbt.vision.faces import Box

Doubts = dict[tuple[str, Box], str]


def champion_doubts(root: Path, params: Params, classifier: Any) -> Doubts:
    """Per unreviewed detection the champion (a bbt.model.predict.ActorClassifier) answers "can't tell": why.
    Empty without a champion; ValueError for a champion whose features are not the descriptors (it needs crops)."""
    if classifier is None:
        return {}
    waiting = unreviewed(root)
    if not waiting:
        return {}
    X, sharp = describe_and_measure(root, params, [(item.image, item.box) for item in waiting])
    decisions = classifier.model.decide_embedded(X, np.array([item.box.w for item in waiting]), sharp)
    return {(item.image, item.box): classifier.cant_tell_reason(item.box, bool(small), bool(blurred), float(s),
                                                                float(distance), decisions.band)
            for item, label, small, blurred, s, distance in zip(waiting, decisions.labels, decisions.too_small,
                                                                 decisions.blurred, sharp, decisions.distances)
            if label == CANT_TELL}
