"""Read back the service's monitoring logs (bbt/monitoring/answers.py) and pick a period out of them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bbt.errors import BbtError
from bbt.monitoring.answers import ANSWER, FEEDBACK, MONITOR_NAME

log = logging.getLogger(__name__)


class MonitoringError(BbtError):
    """The monitoring logs or the period asked for cannot be read."""


@dataclass(frozen=True)
class Record:
    """One logged event: an answered photo (its faces' labels and confidences) or a feedback."""

    event: str
    time: datetime
    model_name: str
    model_version: str
    labels: tuple[str, ...] = ()
    confidences: tuple[float, ...] = ()
    latency_ms: float | None = None
    model_tag: str = ""

    @property
    def n_faces(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Period:
    """[since, until), both in UTC."""

    since: datetime
    until: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.since <= moment < self.until

    def __str__(self) -> str:
        return f"{self.since:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC"


def parse_time(text: str, option: str) -> datetime:
    """An ISO date or date-time (no zone = UTC), as given on the command line."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MonitoringError(f"{option} {text!r} is not a date: give an ISO date or date-time, e.g. 2026-11-20 or "
                              "2026-11-20T08:00") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period_of(since: str | None, until: str | None, days: int, now: datetime) -> Period:
    """The period named by --since/--until, or the `days` days up to `until` (default: now)."""
    end = parse_time(until, "--until") if until else now.astimezone(UTC)
    start = parse_time(since, "--since") if since else end - timedelta(days=days)
    if start >= end:
        raise MonitoringError(f"the period is empty: --since ({start:%Y-%m-%d %H:%M}) must come before --until "
                              f"({end:%Y-%m-%d %H:%M})")
    return Period(start, end)


def log_files(log_dir: Path) -> list[Path]:
    """Every data file of the monitor, rotated ones included (`data.<worker>.log[.<date>]`), sorted."""
    return sorted((log_dir / MONITOR_NAME / "data").glob("data.*.log*"))


def parse_line(line: str) -> Record | None:
    """The record on one log line; None for a line that is not one (a torn write, another format)."""
    try:
        raw = json.loads(line)
        event = raw["event"]
        if event not in (ANSWER, FEEDBACK):
            return None
        labels = tuple(str(label) for label in raw["labels"])
        confidences = tuple(float(c) for c in raw["confidences"])
        if len(labels) != len(confidences):
            return None
        latency = raw.get("latency_ms")
        return Record(event, parse_time(raw["time_utc"], "time_utc"), str(raw["model_name"]),
                      str(raw["model_version"]), labels, confidences, None if latency is None else float(latency),
                      str(raw.get("model_tag", "")))
    except (ValueError, KeyError, TypeError, MonitoringError):
        return None


def read_records(log_dir: Path) -> list[Record]:
    """Every record under `log_dir`, oldest first; MonitoringError when there is no log at all."""
    files = log_files(log_dir)
    if not files:
        raise MonitoringError(f"no monitoring logs in {log_dir / MONITOR_NAME / 'data'}: the service writes them "
                              "under params.yaml's serve.monitoring_dir (relative to where it runs); pass that "
                              "folder with --log-dir")
    records, skipped = [], 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if line.strip():
                record = parse_line(line)
                skipped += record is None
                if record is not None:
                    records.append(record)
    if skipped:
        log.warning("monitor: skipped %d line(s) under %s that are not monitoring records", skipped, log_dir)
    return sorted(records, key=lambda r: (r.time, r.event, r.model_version, r.labels, r.confidences,
                                          r.latency_ms or 0.0))


def in_period(records: list[Record], period: Period) -> list[Record]:
    return [record for record in records if record.time in period]
