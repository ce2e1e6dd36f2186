"""`bbt monitor`'s picture: volume over the period, faces per photo, share of "unknown" and each actor's
confidences, each beside the champion's answers on the test split."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bbt import UNKNOWN
from bbt.monitoring.drift import UNKNOWN_TEST, Summary

PERIOD_COLOUR, REFERENCE_COLOUR = "tab:blue", "tab:grey"
MAX_FACES_SHOWN = 6  # photos with more faces share the last bar


def bin_width(since: datetime, until: datetime) -> timedelta:
    """Days for a period of two days or more, hours for one of two hours or more, minutes below."""
    span = until - since
    if span >= timedelta(days=2):
        return timedelta(days=1)
    return timedelta(hours=1) if span >= timedelta(hours=2) else timedelta(minutes=1)


def volume(summary: Summary) -> tuple[list[datetime], list[int]]:
    """The period cut into bins (bin_width) and the photos answered in each."""
    width = bin_width(summary.period.since, summary.period.until)
    starts = []
    moment = summary.period.since
    while moment < summary.period.until:
        starts.append(moment)
        moment += width
    counts = Counter(int((record.time - summary.period.since) / width) for record in summary.answers)
    return starts, [counts[i] for i in range(len(starts))]


def faces_histogram(counts: list[int] | tuple[int, ...]) -> np.ndarray:
    """Share of photos with 0, 1, ..., MAX_FACES_SHOWN (or more) faces."""
    clipped = np.minimum(np.asarray(counts, dtype=int), MAX_FACES_SHOWN)
    histogram = np.bincount(clipped, minlength=MAX_FACES_SHOWN + 1).astype(float)
    return histogram / histogram.sum() if histogram.sum() else histogram


def ecdf(ax: Any, values: list[float], colour: str, label: str) -> None:
    if values:
        ordered = np.sort(values)
        ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", color=colour,
                label=f"{label} (n={len(ordered)})")


def plot_summary(summary: Summary, png: Path) -> None:
    """Write the report's PNG (the same summary gives the same file: no timestamp in it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    people = summary.reference.people
    columns = max(4, len(people))  # the top row's four panels, and one panel per person below
    fig = plt.figure(figsize=(4 * columns, 7.5))
    grid = fig.add_gridspec(2, columns)
    tests = {test.name: test for test in summary.tests}

    ax = fig.add_subplot(grid[0, :2])
    starts, counts = volume(summary)
    width = bin_width(summary.period.since, summary.period.until)
    ax.bar(starts, counts, width=width * 0.9, align="edge", color=PERIOD_COLOUR)
    ax.set_title(f"photos answered per {'day' if width.days else 'hour' if width.seconds >= 3600 else 'minute'} "
                 f"({len(summary.answers)}; {summary.feedback} reported wrong)")
    ax.set_ylabel("photos")
    fig.autofmt_xdate()

    ax = fig.add_subplot(grid[0, 2])
    bins = np.arange(MAX_FACES_SHOWN + 1)
    ax.bar(bins - 0.2, faces_histogram([r.n_faces for r in summary.answers]), 0.4, color=PERIOD_COLOUR,
           label="period")
    ax.bar(bins + 0.2, faces_histogram(summary.reference.faces_per_photo), 0.4, color=REFERENCE_COLOUR,
           label="test photos")
    ax.set_xticks(bins, [*map(str, bins[:-1]), f"{MAX_FACES_SHOWN}+"])
    ax.set_xlabel("faces in the photo")
    ax.set_ylabel("share of photos")
    ax.set_title("faces per photo")
    ax.legend()

    ax = fig.add_subplot(grid[0, 3:])
    labels, ref = summary.labels, summary.reference.labels
    shares = [labels.count(UNKNOWN) / len(labels) if labels else 0.0, ref.count(UNKNOWN) / len(ref) if ref else 0.0]
    ax.bar(["period", "test split"], shares, color=[PERIOD_COLOUR, REFERENCE_COLOUR])
    ax.set_ylim(0, 1)
    ax.set_ylabel('share of faces answered "unknown"')
    ax.set_title(f"unknown: {tests[UNKNOWN_TEST].verdict}")

    confidences = summary.confidences
    for column, actor in enumerate(people):
        ax = fig.add_subplot(grid[1, column])
        ecdf(ax, [c for label, c in zip(labels, confidences, strict=True) if label == actor], PERIOD_COLOUR,
             "period")
        ecdf(ax, [c for label, c in zip(ref, summary.reference.confidences, strict=True) if label == actor],
             REFERENCE_COLOUR, "test split")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"confidence of faces named {actor}")
        ax.set_title(f"{actor}: {tests[f'confidence: {actor}'].verdict}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{summary.model_name} version {summary.model_version}, {summary.period}: {summary.verdict}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90, metadata={"Software": None})
    plt.close(fig)
