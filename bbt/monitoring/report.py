"""`bbt monitor`: what the service answered in a period against the champion's answers on the test split.

Reads the monitoring logs (bbt/monitoring/answers.py), takes the period's records of one model version (by default the
version that answered last), compares them with that version's reference (bbt/monitoring/reference.py), prints a
table, draws a PNG and says whether the answers drifted (bbt/monitoring/drift.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import numpy as np

from bbt import CANT_TELL, UNKNOWN
from bbt.model.predict import pipeline_path
from bbt.monitoring.drift import DRIFT, TOO_FEW, UNKNOWN_TEST, DriftTest, Summary, summarise
from bbt.monitoring.logs import MonitoringError, Period, Record, in_period, read_records
from bbt.monitoring.plot import plot_summary
from bbt.monitoring.reference import METADATA_KEY, Reference, reference_on_test_split

log = logging.getLogger(__name__)

# `bbt monitor`'s exit status when it flags a drift, so a cron job or a Prefect flow can act on it.
DRIFT_EXIT = 3
QUANTILES = (0.1, 0.5, 0.9)


def last_answer(records: list[Record], version: str | None = None) -> Record | None:
    """The last answer in `records` (of `version`, when given)."""
    answers = [r for r in records if r.event == "answer" and version in (None, r.model_version)]
    return answers[-1] if answers else None


# ---- the reference ---------------------------------------------------------------------------------------------

def load_reference(model_name: str, version: str, tag: str = "") -> Reference:
    """The reference stored with `version` of the model: in its BentoML store copy (the model served: `tag`, or
    the newest copy of that version), else in the MLflow registry. A model registered before references existed
    is scored on the project's test split."""
    folder = model_folder(model_name, version, tag)
    from mlflow.models import Model

    metadata = Model.load(str(folder / "MLmodel")).metadata or {}
    if METADATA_KEY in metadata:
        return Reference.from_metadata(metadata[METADATA_KEY], f"{model_name} version {version}'s metadata")
    import mlflow.sklearn

    log.info("monitor: %s version %s carries no reference (registered before bbt monitor): scoring it on the "
             "test split in artifacts/", model_name, version)
    return reference_on_test_split(mlflow.sklearn.load_model(str(pipeline_path(folder))))


def model_folder(model_name: str, version: str, tag: str = "") -> Path:
    """The MLflow model folder of a registry version: its BentoML store copy (the one tagged `tag`, else the newest
    of that version), or the registry's."""
    import bentoml

    from bbt.registry.bento_store import REGISTRY_VERSION

    try:
        stored = sorted(bentoml.models.list(model_name), key=lambda m: m.info.creation_time, reverse=True)
    except bentoml.exceptions.NotFound:
        stored = []
    found = [m for m in stored if str(m.tag) == tag] or \
        [m for m in stored if m.info.labels.get(REGISTRY_VERSION) == version]
    if found:
        return Path(found[0].path_of("mlflow_model"))
    import mlflow
    from mlflow.exceptions import MlflowException

    from bbt.registry.tracking import setup_tracking, tracking_uri

    setup_tracking()
    try:
        return Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}"))
    except MlflowException:
        raise MonitoringError(
            f"{model_name} version {version} answered these requests but is neither in the BentoML store nor in "
            f"the MLflow store {tracking_uri()}: run bbt monitor where that model was registered, or pick another "
            "version with --model-version") from None


# ---- the table -------------------------------------------------------------------------------------------------

def quantiles(values: list[float] | tuple[float, ...]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{q:.2f}" for q in np.quantile(np.asarray(values, dtype=float), QUANTILES))


def share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} ({part} of {whole})" if whole else "-"


def test_cell(test: DriftTest) -> str:
    if test.p_value is None:
        return f"{TOO_FEW} (n={test.n_period}, ref n={test.n_reference})"
    return f"{test.verdict}: p={test.p_value:.2g} (level {test.level:.2g})"


def table_rows(summary: Summary) -> list[tuple[str, str, str, str]]:
    """(what, period, test split, test) rows of the report."""
    answers, ref = summary.answers, summary.reference
    faces = [record.n_faces for record in answers]
    labels, confidences = summary.labels, summary.confidences
    days = (summary.period.until - summary.period.since) / timedelta(days=1)
    latencies = [r.latency_ms for r in answers if r.latency_ms is not None]
    tests = {test.name: test for test in summary.tests}
    rows = [
        ("photos answered", f"{len(answers)}" + (f" ({len(answers) / days:.1f} a day)" if days >= 1 else ""),
         "-", ""),
        ("feedback (wrong answers reported)", share(summary.feedback, len(answers)), "-", ""),
        ("faces", str(len(labels)), str(len(ref.labels)), ""),
        ("faces per photo: mean / none", f"{np.mean(faces):.2f} / {share(faces.count(0), len(faces))}"
         if faces else "-", f"{np.mean(ref.faces_per_photo):.2f} / -" if ref.faces_per_photo else "-", ""),
        ('share of "unknown"', share(labels.count(UNKNOWN), len(labels)),
         share(ref.labels.count(UNKNOWN), len(ref.labels)), test_cell(tests[UNKNOWN_TEST])),
        ("share of \"can't tell\" (too small to judge, or in the band of doubt)",
         share(labels.count(CANT_TELL), len(labels)),
         share(ref.labels.count(CANT_TELL), len(ref.labels)), ""),
    ]
    for actor in ref.people:
        mine = [c for label, c in zip(labels, confidences, strict=True) if label == actor]
        theirs = [c for label, c in zip(ref.labels, ref.confidences, strict=True) if label == actor]
        rows.append((f"confidence {actor}: p10 / p50 / p90", f"{quantiles(mine)} (n={len(mine)})",
                     f"{quantiles(theirs)} (n={len(theirs)})", test_cell(tests[f"confidence: {actor}"])))
    rows.append(("latency p50 / p95", " / ".join(f"{v:.0f} ms" for v in np.percentile(latencies, (50, 95)))
                 if latencies else "-", "-", ""))
    for version, count in summary.other_versions.items():
        rows.append((f"version {version} (not compared)", f"{count} photos answered", "", ""))
    return rows


def compared(summary: Summary) -> str:
    """What traffic the report judged, against what: the model version, the period, photos and faces."""
    version = f"{summary.model_name} version {summary.model_version}"
    return (f"compared: the {len(summary.answers)} photos ({len(summary.labels)} faces) {version} answered from "
            f"{summary.period}, with its answers on its {len(summary.reference.labels)} held-out test faces "
            f"(from {summary.reference.source})")


def conclusion(summary: Summary, alpha: float, min_faces: int) -> str:
    drifted = [test.name for test in summary.tests if test.verdict == DRIFT]
    if drifted:
        return f"DRIFT in {', '.join(drifted)} (false-alarm rate {alpha:g} over the tests run)"
    if summary.verdict == TOO_FEW:
        return (f"too few requests to judge: a test needs {min_faces} faces in the period (monitor.min_faces), "
                f"got {len(summary.labels)}")
    return f"no drift (false-alarm rate {alpha:g} over the tests run)"


def print_report(summary: Summary, alpha: float, min_faces: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.model_name} version {summary.model_version}, {summary.period}")
    for column in ("", "period", "test split", "test"):
        table.add_column(column)
    for row in table_rows(summary):
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    console.print(compared(summary), soft_wrap=True)
    console.print(conclusion(summary, alpha, min_faces))


def run_monitor(log_dir: Path, period: Period, png: Path, alpha: float, min_faces: int,
                version: str | None = None, reference: Reference | None = None) -> int:
    """Report the period (table and PNG); the exit status: DRIFT_EXIT on a drift, 0 otherwise (also when there is
    nothing to judge). `reference`: given, instead of the model version's own (tests)."""

    records = read_records(log_dir)
    chosen = in_period(records, period)
    if not [r for r in chosen if r.event == "answer"]:
        held = f"from {records[0].time:%Y-%m-%d %H:%M} to {records[-1].time:%Y-%m-%d %H:%M} UTC" if records \
            else "none"
        print(f"no requests answered from {period} in {log_dir} (the logs hold {len(records)} records: {held}); "
              "choose the period with --since/--until or --days")
        return 0
    last = last_answer(chosen, version)
    if last is None:
        raise MonitoringError(f"--model-version {version} answered no request from {period}: choose one of the "
                              f"period's versions {sorted({r.model_version for r in chosen})}")
    reference = reference or load_reference(last.model_name, last.model_version, last.model_tag)
    summary = summarise(chosen, period, reference, last.model_version, alpha, min_faces)
    print_report(summary, alpha, min_faces)
    plot_summary(summary, png)
    print(f"plot: {png}")
    return DRIFT_EXIT if summary.verdict == DRIFT else 0

