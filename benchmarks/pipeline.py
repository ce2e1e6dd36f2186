"""Time `dvc repro` from an empty cache and a no-op `dvc repro`, in a fresh copy of the project.

    python benchmarks/pipeline.py [--runs 2]

Prints wall-clock seconds per stage and in total. Needs ../shared/dvc-store (or BBT_SHARED).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import copy_project

STAGE = re.compile(r"Running stage '(\w+)'")


def timed_repro(project, *args: str) -> tuple[float, dict[str, float]]:
    """Total seconds of one `dvc repro`, and seconds per stage from the time each stage's header appeared."""
    import subprocess

    started = time.perf_counter()
    stages: dict[str, float] = {}
    current, current_start = None, started
    process = subprocess.Popen(["dvc", "repro", *args], cwd=project.root, env=project.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    for line in process.stdout:
        found = STAGE.search(line)
        if found:
            now = time.perf_counter()
            if current:
                stages[current] = now - current_start
            current, current_start = found.group(1), now
    if process.wait() != 0:
        raise SystemExit(f"dvc repro failed in {project.root}")
    total = time.perf_counter() - started
    if current:
        stages[current] = started + total - current_start
    return total, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="fresh copies to time (each from an empty cache)")
    args = parser.parse_args()
    totals, noops = [], []
    for run in range(args.runs):
        project = copy_project(Path(tempfile.mkdtemp(prefix="bbt-bench-")))
        project.run("dvc", "pull", "-q", "data.dvc")
        total, stages = timed_repro(project)
        noop, _ = timed_repro(project)
        totals.append(total)
        noops.append(noop)
        per_stage = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in stages.items())
        print(f"run {run + 1}: full dvc repro {total:.1f}s ({per_stage}); no-op dvc repro {noop:.1f}s")
    print(f"full dvc repro from an empty cache: median {statistics.median(totals):.1f}s over {args.runs} run(s)")
    print(f"no-op dvc repro: median {statistics.median(noops):.1f}s")


if __name__ == "__main__":
    main()
