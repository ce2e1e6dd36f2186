"""A face the model answered: what a photo process sends back and every route answers from.

Its own module, without the model's libraries: the serving worker holds answers, never the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bbt.vision.faces import Box


@dataclass(frozen=True)
class FacePrediction:
    box: Box
    label: str  # an actor, UNKNOWN (not one of the four) or CANT_TELL (too small, or in the band of doubt: see `reason`)
    closest_actor: str
    confidence: float  # the closed-set probability of closest_actor among the four
    probabilities: dict[str, float]
    distance: float  # the open-set rule's distance; the face is named when it is <= threshold
    threshold: float
    reason: str = ""  # why the model cannot tell, for CANT_TELL

    def as_dict(self) -> dict[str, Any]:
        return {"box": self.box.as_dict(), "label": self.label, "closest_actor": self.closest_actor,
                "confidence": self.confidence, "probabilities": self.probabilities,
                "distance": self.distance, "threshold": self.threshold, "reason": self.reason}
