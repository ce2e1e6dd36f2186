"""What the service answers, logged per request with BentoML's monitoring API: never an image or its pixels.

Every record is one JSON line of BentoML's default monitor in
`<serve.monitoring_dir>/bbt_answers/data/data.<worker>.log` (a file per worker process, rotated daily to
`data.<worker>.log.<date>`), with the columns below in this order, then BentoML's own `timestamp` (the server's
local time, no zone), `request_id` and `trace_id`:

- `event`: "answer" (a photo was answered) or "feedback" (a user reported an answer wrong on the page);
- `time_utc`: when, ISO 8601 in UTC (`2026-11-27T09:30:00.123456+00:00`): what `bbt monitor` filters on;
- `model_name`, `model_version`, `model_tag`: the registered model that answered (its registry version) and
  its BentoML store tag (registry versions restart in every MLflow store; the tag names one stored model);
- `n_faces`: the faces found in the photo (0 for feedback);
- `labels`, `closest_actors`, `confidences`: one entry per face, in the answer's order (empty for feedback);
- `latency_ms`: from the photo's bytes being read to its answer, waiting for a thread included (null for
  feedback).

One monitor name for both events: BentoML's default monitor configures one global logger, so a second monitor
name in the same process would write into the first one's files.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbt.model.face_prediction import FacePrediction

log = logging.getLogger(__name__)

MONITOR_NAME = "bbt_answers"
ANSWER = "answer"
FEEDBACK = "feedback"
# Column -> (BentoML role, BentoML type): the record's fixed layout, in this order.
COLUMNS: dict[str, tuple[str, str]] = {
    "event": ("feature", "categorical"),
    "time_utc": ("feature", "categorical"),
    "model_name": ("feature", "categorical"),
    "model_version": ("feature", "categorical"),
    "model_tag": ("feature", "categorical"),
    "n_faces": ("prediction", "numerical"),
    "labels": ("prediction", "categorical"),
    "closest_actors": ("prediction", "categorical"),
    "confidences": ("prediction", "numerical_sequence"),
    "latency_ms": ("feature", "numerical"),
}


@dataclass(frozen=True)
class ServedModel:
    """The model a service answers with: registry name and version, and its BentoML store tag."""

    name: str
    version: str
    tag: str

    def columns(self) -> dict[str, str]:
        return {"model_name": self.name, "model_version": self.version, "model_tag": self.tag}


def answer_record(model: ServedModel, faces: Sequence[FacePrediction], latency_s: float,
                  now: datetime) -> dict[str, Any]:
    """The record of one answered photo (COLUMNS, in order)."""
    return {"event": ANSWER, "time_utc": now.astimezone(UTC).isoformat(), **model.columns(),
            "n_faces": len(faces), "labels": [f.label for f in faces],
            "closest_actors": [f.closest_actor for f in faces], "confidences": [f.confidence for f in faces],
            "latency_ms": round(latency_s * 1000, 1)}


def feedback_record(model: ServedModel, now: datetime) -> dict[str, Any]:
    """The record of one feedback a user gave on an answer of this model (COLUMNS, in order)."""
    return {"event": FEEDBACK, "time_utc": now.astimezone(UTC).isoformat(), **model.columns(), "n_faces": 0,
            "labels": [], "closest_actors": [], "confidences": [], "latency_ms": None}


def log_answer(log_dir: Path, model: ServedModel, faces: Sequence[FacePrediction], latency_s: float) -> None:
    """Log one answered photo under `log_dir`; a failure is logged, never raised (it must not fail a request)."""
    write_record(log_dir, answer_record(model, faces, latency_s, datetime.now(UTC)))


def log_feedback(log_dir: Path, model: ServedModel) -> None:
    """Log that a user's report on an answer was kept (for `bbt monitor`'s feedback rate); never raises."""
    write_record(log_dir, feedback_record(model, datetime.now(UTC)))


def write_record(log_dir: Path, record: dict[str, Any]) -> None:
    """One record through `bentoml.monitor` (BentoML's default monitor, writing under `log_dir`); never raises.

    Runs in a copy of the caller's context: the monitor keeps its pending record in context variables, and one
    that failed halfway must not be left behind for the next record of the same request or test."""
    try:
        contextvars.copy_context().run(_write, log_dir, record)
    except Exception:  # monitoring must never fail the request it describes
        log.warning("monitoring: could not write a record under %s", log_dir, exc_info=True)


def _write(log_dir: Path, record: dict[str, Any]) -> None:
    import bentoml

    # BentoML's `monitoring.enabled: false` (its configuration) still turns this into a no-op monitor.
    with bentoml.monitor(MONITOR_NAME, monitor_class="default",
                         monitor_options={"log_path": str(log_dir)}) as monitor:
        for column, (role, kind) in COLUMNS.items():
            monitor.log(record[column], column, role, kind)
