"""Monitoring without a server: records written through BentoML's monitor and read back, the period, the drift
tests and `bbt monitor`'s report, on generated answers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bbt import CANT_TELL, UNKNOWN
from bbt.config import ConfigError, load_params
from bbt.model.face_prediction import FacePrediction
from bbt.monitoring.answers import (
    COLUMNS,
    ServedModel,
    answer_record,
    feedback_record,
    log_answer,
    log_feedback,
    write_record,
)
from bbt.monitoring.drift import DRIFT, NO_DRIFT, TOO_FEW, UNKNOWN_TEST, judge, summarise, verdict
from bbt.monitoring.logs import (
    MonitoringError,
    Period,
    Record,
    in_period,
    log_files,
    parse_line,
    period_of,
    read_records,
)
from bbt.monitoring.reference import Reference, faces_per_photo
from bbt.monitoring.report import DRIFT_EXIT, conclusion, run_monitor
from bbt.vision.faces import Box

# params.yaml's cast, as the tests know it.
ACTORS = ("howard", "leonard", "raj", "sheldon")

START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK = Period(START, START + timedelta(days=7))


@pytest.fixture(autouse=True)
def fresh_monitors(monkeypatch: pytest.MonkeyPatch) -> None:
    """BentoML keeps one monitor per name and process, with the folder it was first given: one per test."""
    import bentoml._internal.monitoring.api as monitoring_api

    monkeypatch.setattr(monitoring_api, "_MONITOR_INSTANCES", {})


def face(label: str, confidence: float, closest: str | None = None) -> FacePrediction:
    closest = closest or (label if label != UNKNOWN else "raj")
    probabilities = {actor: round((1 - confidence) / 3, 4) for actor in ACTORS} | {closest: confidence}
    return FacePrediction(Box(10, 20, 30, 30), label, closest, confidence, probabilities, 0.4, 0.6)


def sample(rng: np.random.Generator, n: int, unknown_share: float, low: float = 0.8) -> list[tuple[str, float]]:
    """`n` faces: unknown with `unknown_share`, else an actor (evenly) with a confidence in [low, low + 0.2)."""
    faces = []
    for _ in range(n):
        label = UNKNOWN if rng.random() < unknown_share else str(rng.choice(ACTORS))
        faces.append((label, round(float(rng.uniform(0.4, 0.9) if label == UNKNOWN else rng.uniform(low, low + 0.2)), 4)))
    return faces


def reference(seed: int = 0) -> Reference:
    """A test split like the real one in size: 50 faces, a fifth of them strangers."""
    faces = sample(np.random.default_rng(seed), 50, 0.2)
    return Reference(tuple(f[0] for f in faces), tuple(f[1] for f in faces), (1, 1, 2, 1, 3), "generated")


def served(version: str) -> ServedModel:
    return ServedModel("bbt-actor-classifier", version, f"bbt-actor-classifier:tag{version}")


def write_answers(log_dir: Path, faces: list[tuple[str, float]], per_photo: int = 2,
                  start: datetime = START + timedelta(days=1), version: str = "3") -> int:
    """Log `faces` as photos of `per_photo` faces, one an hour from `start`; returns the photos logged."""
    import bentoml._internal.monitoring.api as monitoring_api

    monitoring_api._MONITOR_INSTANCES.clear()  # a new folder: BentoML would keep writing to the first one
    photos = [faces[i:i + per_photo] for i in range(0, len(faces), per_photo)]
    for hour, photo in enumerate(photos):
        predictions = [face(label, confidence) for label, confidence in photo]
        write_record(log_dir, answer_record(served(version), predictions, 0.05 + hour / 1000,
                                            start + timedelta(hours=hour)))
    return len(photos)


def test_a_record_goes_through_bentoml_monitor_and_comes_back(tmp_path: Path) -> None:
    log_answer(tmp_path, served("7"), [face("raj", 0.93), face(UNKNOWN, 0.61)], 0.1234)
    log_answer(tmp_path, served("7"), [], 0.02)
    log_feedback(tmp_path, served("7"))
    [data] = log_files(tmp_path)
    assert data == tmp_path / "bbt_answers" / "data" / "data.0.log"
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    # Our columns in their documented order, then BentoML's own; nothing else (no image, no box, no pixels).
    assert [list(line)[:len(COLUMNS)] for line in lines] == [list(COLUMNS)] * 3
    assert all(set(line) == {*COLUMNS, "timestamp", "request_id", "trace_id"} for line in lines)
    assert lines[0]["labels"] == ["raj", UNKNOWN] and lines[0]["confidences"] == [0.93, 0.61]
    assert lines[0]["closest_actors"] == ["raj", "raj"] and lines[0]["latency_ms"] == 123.4
    schema = json.loads((tmp_path / "bbt_answers" / "schema" / "schema.0.log").read_text())
    assert [column["name"] for column in schema["columns"]] == list(COLUMNS)
    answer, empty, feedback = read_records(tmp_path)
    assert (answer.event, answer.model_version, answer.labels, answer.n_faces) == ("answer", "7", ("raj", UNKNOWN), 2)
    assert answer.model_tag == "bbt-actor-classifier:tag7"
    assert (empty.n_faces, empty.latency_ms) == (0, 20.0)
    assert (feedback.event, feedback.latency_ms) == ("feedback", None)
    assert datetime.now(UTC) - feedback.time < timedelta(minutes=1)


def test_the_record_is_a_function_of_its_inputs() -> None:
    at = datetime(2026, 11, 27, 10, 30, tzinfo=UTC)
    faces = [face("howard", 0.9)]
    assert answer_record(served("1"), faces, 0.25, at) == answer_record(served("1"), faces, 0.25, at)
    assert answer_record(served("1"), faces, 0.25, at)["time_utc"] == "2026-11-27T10:30:00+00:00"
    assert list(feedback_record(served("1"), at)) == list(COLUMNS)


def test_a_monitor_that_cannot_write_never_fails_the_request(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="bbt.monitoring.answers"):
        log_answer(blocked, served("1"), [face("raj", 0.9)], 0.1)
    assert "could not write a record" in caplog.text
    # The failed record left nothing behind in this context: the next one, elsewhere, is written.
    write_answers(tmp_path / "logs", [("raj", 0.9)])
    assert len(read_records(tmp_path / "logs")) == 1


def test_lines_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    write_answers(tmp_path, [("raj", 0.9)], per_photo=1)
    with log_files(tmp_path)[0].open("a") as out:
        out.write('{"event": "answer", "time_utc": "2026-11-03T00:00:00+00:00", "labels": ["raj"]\n')  # torn
        out.write('{"event": "other"}\n\n')
    (log_files(tmp_path)[0].parent / "data.1.log.2026-11-02").write_text(log_files(tmp_path)[0].read_text())
    assert len(read_records(tmp_path)) == 2  # the rotated file of a second worker counts too
    assert parse_line('{"event": "answer", "time_utc": "x", "model_name": "m", "model_version": "1", '
                      '"labels": ["raj"], "confidences": [0.9]}') is None
    assert parse_line('{"event": "answer", "time_utc": "2026-11-03", "model_name": "m", "model_version": "1", '
                      '"labels": ["raj"], "confidences": []}') is None


def test_no_logs_say_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MonitoringError, match=rf"no monitoring logs in {tmp_path}/bbt_answers/data: .*--log-dir"):
        read_records(tmp_path)


def test_the_period() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert period_of(None, None, 7, now) == Period(now - timedelta(days=7), now)
    assert period_of("2026-11-20", "2026-11-21T06:00", 7, now) == Period(datetime(2026, 11, 20, tzinfo=UTC),
                                                                         datetime(2026, 11, 21, 6, tzinfo=UTC))
    assert period_of(None, "2026-11-21T03:00+02:00", 1, now).until == datetime(2026, 11, 21, 1, tzinfo=UTC)
    with pytest.raises(MonitoringError, match="--since 'last week' is not a date: give an ISO date"):
        period_of("last week", None, 7, now)
    with pytest.raises(MonitoringError, match="the period is empty: --since"):
        period_of("2026-11-21", "2026-11-20", 7, now)


def test_the_period_filter_keeps_since_and_drops_until(tmp_path: Path) -> None:
    write_answers(tmp_path, [("raj", 0.9)] * 5, per_photo=1, start=START)  # one an hour from START
    records = read_records(tmp_path)
    chosen = in_period(records, Period(START + timedelta(hours=1), START + timedelta(hours=3)))
    assert [r.time for r in chosen] == [START + timedelta(hours=1), START + timedelta(hours=2)]


def test_the_same_distribution_is_no_drift() -> None:
    faces = sample(np.random.default_rng(1), 400, 0.2)
    tests = judge([f[0] for f in faces], [f[1] for f in faces], reference(), alpha=0.01, min_faces=30)
    assert [t.verdict for t in tests] == [NO_DRIFT] * 5
    assert verdict(tests) == NO_DRIFT
    assert {t.level for t in tests} == {0.01 / 5}


def test_more_unknown_faces_are_a_drift() -> None:
    faces = sample(np.random.default_rng(2), 400, 0.6)
    tests = judge([f[0] for f in faces], [f[1] for f in faces], reference(), alpha=0.01, min_faces=30)
    assert tests[0].name == UNKNOWN_TEST and tests[0].verdict == DRIFT
    assert verdict(tests) == DRIFT


def test_less_confident_answers_are_a_drift() -> None:
    faces = sample(np.random.default_rng(3), 400, 0.2, low=0.4)
    tests = judge([f[0] for f in faces], [f[1] for f in faces], reference(), alpha=0.01, min_faces=30)
    assert tests[0].verdict == NO_DRIFT
    assert [t.verdict for t in tests[1:]] == [DRIFT] * 4


def test_too_few_faces_are_not_judged() -> None:
    faces = sample(np.random.default_rng(4), 20, 0.9, low=0.1)
    tests = judge([f[0] for f in faces], [f[1] for f in faces], reference(), alpha=0.01, min_faces=30)
    assert [t.verdict for t in tests] == [TOO_FEW] * 5
    assert verdict(tests) == TOO_FEW
    # An actor too rare in the reference is not judged, however many faces the period has.
    rare = Reference(("raj", "raj", UNKNOWN), (0.9, 0.9, 0.5), (), classes=ACTORS)
    tests = judge(["raj"] * 40 + [UNKNOWN] * 40, [0.95] * 80, rare, alpha=0.01, min_faces=30)
    assert tests[0].verdict in (DRIFT, NO_DRIFT) and tests[3].verdict == TOO_FEW


def test_bbt_monitor_reports_a_drift_with_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = write_answers(tmp_path / "logs", sample(np.random.default_rng(5), 120, 0.6, low=0.4))
    log_feedback(tmp_path / "logs", served("3"))  # now: outside the period
    write_record(tmp_path / "logs", feedback_record(served("3"), START + timedelta(days=2)))
    write_answers(tmp_path / "logs", [("raj", 0.9)] * 4, start=START + timedelta(days=3), version="2")
    png = tmp_path / "out" / "monitor.png"
    assert run_monitor(tmp_path / "logs", WEEK, png, 0.01, 30, version="3", reference=reference()) == DRIFT_EXIT
    out = capsys.readouterr().out
    assert f"{photos} (8.6 a day)" in out and f"{1 / photos:.1%} (1 of {photos})" in out
    assert "version 2 (not compared)" in out and "2 photos answered" in out
    assert (f"compared: the {photos} photos (120 faces) bbt-actor-classifier version 3 answered from 2026-11-02 "
            "00:00 to 2026-11-09 00:00 UTC, with its answers on its 50 held-out test faces (from generated)") in out
    assert "DRIFT in share of \"unknown\"" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same logs, same period: the same picture.
    first = png.read_bytes()
    run_monitor(tmp_path / "logs", WEEK, png, 0.01, 30, version="3", reference=reference())
    assert png.read_bytes() == first


def test_bbt_monitor_without_drift_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_answers(tmp_path, sample(np.random.default_rng(6), 300, 0.2))
    assert run_monitor(tmp_path, WEEK, tmp_path / "a.png", 0.01, 30, reference=reference()) == 0
    assert "no drift (false-alarm rate 0.01 over the tests run)" in capsys.readouterr().out


def test_bbt_monitor_counts_faces_too_small_to_judge_apart(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    faces = sample(np.random.default_rng(8), 80, 0.2) + [(CANT_TELL, 0.5)] * 20
    write_answers(tmp_path, faces)
    run_monitor(tmp_path, WEEK, tmp_path / "c.png", 0.01, 30, reference=reference())
    out = capsys.readouterr().out
    unknown = sum(label == UNKNOWN for label, _ in faces)
    assert "too small to judge" in out and "20.0% (20 of 100)" in out
    assert f"{unknown / 100:.1%} ({unknown} of 100)" in out  # "unknown" counts only the faces judged strangers


def test_too_few_requests_are_said_so() -> None:
    faces = sample(np.random.default_rng(7), 10, 0.9)
    records = [Record("answer", START + timedelta(hours=1), "m", "3", (label,), (c,), 5.0) for label, c in faces]
    summary = summarise(records, WEEK, reference(), "3", 0.01, 30)
    assert summary.verdict == TOO_FEW
    assert conclusion(summary, 0.01, 30) == ("too few requests to judge: a test needs 30 faces in the period "
                                             "(monitor.min_faces), got 10")


def test_bbt_monitor_says_when_the_period_has_no_requests(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_answers(tmp_path, [("raj", 0.9)] * 2, per_photo=1, start=START - timedelta(days=30))
    assert run_monitor(tmp_path, WEEK, tmp_path / "m.png", 0.01, 30, reference=reference()) == 0
    out = capsys.readouterr().out
    assert "no requests answered from 2026-11-02 00:00 to 2026-11-09 00:00 UTC" in out
    assert "the logs hold 2 records: from 2026-10-03 00:00 to 2026-10-03 01:00 UTC" in out
    assert not (tmp_path / "m.png").exists()
    with pytest.raises(MonitoringError, match=r"--model-version 9 answered no request .* \['3'\]"):
        run_monitor(tmp_path, Period(START - timedelta(days=31), START), tmp_path / "m.png", 0.01, 30, "9",
                    reference())


def test_faces_per_test_photo_come_from_the_detections(tmp_path: Path) -> None:
    detections = tmp_path / "detections.csv"
    detections.write_text("image,x,y,w,h,status,label\na/1.jpg,0,0,1,1,accepted,raj\nb/2.jpg,0,0,1,1,,\n"
                          "a/1.jpg,5,5,1,1,unreviewed,\n")
    assert faces_per_photo(np.array(["b/2.jpg", "a/1.jpg", "a/1.jpg", "c/3.jpg"]), detections) == (2, 1)
    assert faces_per_photo(np.array(["a/1.jpg"]), tmp_path / "missing.csv") == ()
    ref = reference()
    assert Reference.from_metadata(ref.as_metadata(), "x") == Reference(ref.labels, ref.confidences,
                                                                        ref.faces_per_photo, "x")


@pytest.mark.parametrize(("text", "message"), [
    ("monitor:\n  alpha: 2\n", "monitor.days/alpha/min_faces must be"),
    ("monitor:\n  min_faces: 0\n", "monitor.days/alpha/min_faces must be"),
    ("monitor:\n  window: 3\n", r"unknown key\(s\) monitor.window"),
])
def test_monitor_params_are_checked(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")
