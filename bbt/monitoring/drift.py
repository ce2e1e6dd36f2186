"""Whether the faces the service answered in a period drifted from the champion's answers on the test split.

Two kinds of test, each run only when both samples are large enough (otherwise: too few faces to judge):

- the share of "unknown": Fisher's exact test on the 2x2 table (unknown, named) x (period, test split). It is
  exact, so it stays valid with the test split's few dozen faces, where a chi-square approximation would not;
- each actor's confidences: the two-sample Kolmogorov-Smirnov test of the confidences of the faces named that
  actor in the period against those named that actor on the test split. It assumes no distribution and reacts
  to a change anywhere in it (the model less sure of Raj than it was, or sure of Raj on other faces).

One run holds its chance of a false alarm at `alpha` (Bonferroni): each test is judged at alpha / tests run.
Faces of one photo (and one user's photos) are not independent samples, so a p-value is a guide, not a proof;
the minimum sample sizes keep a handful of requests from raising an alarm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from scipy.stats import fisher_exact, ks_2samp

from bbt import UNKNOWN
from bbt.monitoring.logs import Period, Record
from bbt.monitoring.reference import Reference

# Test faces an actor needs before its confidences are compared: with 3, a complete shift against 30 served
# faces already has p < 0.001, so the test can fire; with fewer it never could at the usual levels.
REFERENCE_MIN_FACES = 3
DRIFT, NO_DRIFT, TOO_FEW = "drift", "no drift", "too few faces to judge"
UNKNOWN_TEST = 'share of "unknown"'


@dataclass(frozen=True)
class DriftTest:
    """One comparison of the period with the reference; p_value is None when it was not run (too few faces)."""

    name: str
    method: str
    n_period: int
    n_reference: int
    statistic: float | None = None
    p_value: float | None = None
    level: float | None = None  # the p-value below which this test flags a drift (alpha / tests run)

    @property
    def verdict(self) -> str:
        if self.p_value is None or self.level is None:
            return TOO_FEW
        return DRIFT if self.p_value < self.level else NO_DRIFT


def verdict(tests: Sequence[DriftTest]) -> str:
    """drift when any test flags one; too few faces to judge when none could run; no drift otherwise."""
    verdicts = {test.verdict for test in tests}
    if DRIFT in verdicts:
        return DRIFT
    return NO_DRIFT if NO_DRIFT in verdicts else TOO_FEW


def judge(labels: Sequence[str], confidences: Sequence[float], reference: Reference, alpha: float,
          min_faces: int) -> list[DriftTest]:
    """The unknown-share test, then one confidence test per person the model names (its classes, in order). `labels` and `confidences`:
    one entry per face answered in the period."""
    unknown = sum(label == UNKNOWN for label in labels)
    ref_unknown = sum(label == UNKNOWN for label in reference.labels)
    table = [[unknown, len(labels) - unknown], [ref_unknown, len(reference.labels) - ref_unknown]]
    # (the test not yet run, how to run it: None when either sample is too small)
    planned: list[tuple[DriftTest, Callable[[], Any] | None]] = [(
        DriftTest(UNKNOWN_TEST, "Fisher's exact", len(labels), len(reference.labels)),
        (lambda: fisher_exact(table, alternative="two-sided"))
        if len(labels) >= min_faces and len(reference.labels) >= REFERENCE_MIN_FACES else None,
    )]
    for actor in reference.people:
        period = [c for label, c in zip(labels, confidences, strict=True) if label == actor]
        ref = [c for label, c in zip(reference.labels, reference.confidences, strict=True) if label == actor]
        planned.append((
            DriftTest(f"confidence: {actor}", "Kolmogorov-Smirnov", len(period), len(ref)),
            partial(ks_2samp, period, ref, alternative="two-sided", method="auto")
            if len(period) >= min_faces and len(ref) >= REFERENCE_MIN_FACES else None,
        ))
    level = alpha / max(1, sum(run is not None for _, run in planned))
    tests = []
    for test, run in planned:
        if run is None:
            tests.append(test)
            continue
        result = run()
        tests.append(DriftTest(test.name, test.method, test.n_period, test.n_reference,
                               round(float(result.statistic), 4), float(result.pvalue), level))
    return tests


@dataclass(frozen=True)
class Summary:
    """One model version's answers in a period, and how they compare with its reference."""

    period: Period
    model_name: str
    model_version: str
    answers: tuple[Record, ...]
    feedback: int
    other_versions: dict[str, int]
    reference: Reference
    tests: tuple[DriftTest, ...]

    @property
    def labels(self) -> list[str]:
        return [label for record in self.answers for label in record.labels]

    @property
    def confidences(self) -> list[float]:
        return [c for record in self.answers for c in record.confidences]

    @property
    def verdict(self) -> str:
        return verdict(self.tests)


def summarise(records: list[Record], period: Period, reference: Reference, version: str, alpha: float,
              min_faces: int) -> Summary:
    """The period's records of `version` against its reference (`records`: the period's records)."""
    mine = [r for r in records if r.model_version == version]
    answers = tuple(r for r in mine if r.event == "answer")
    others = Counter(r.model_version for r in records if r.model_version != version and r.event == "answer")
    labels = [label for record in answers for label in record.labels]
    confidences = [c for record in answers for c in record.confidences]
    name = mine[0].model_name if mine else ""
    return Summary(period, name, version, answers, sum(r.event == "feedback" for r in mine),
                   dict(sorted(others.items())), reference,
                   tuple(judge(labels, confidences, reference, alpha, min_faces)))
