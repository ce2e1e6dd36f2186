"""Time the clean stage's per-image work on each mapper: process pool, Prefect threads, Prefect on Dask.

    python benchmarks/flow.py [--images 96] [--batch-size 16]

Runs in a fresh copy of the project (data pulled from ../shared/dvc-store, or BBT_SHARED), on the first
`--images` photos: the local process pool (`dvc repro`'s), Prefect tasks on threads (the flow's default),
and Prefect tasks on a local Dask cluster of 2 workers (its start-up included). Prints wall-clock
seconds; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import copy_project


def clean_timings(root: Path, images: int, batch_size: int) -> dict[str, float]:
    """Seconds of run_clean over the first `images` photos with each mapper (in a child process, cwd = root)."""
    script = f"""
import json, os, shutil, sys, time
from pathlib import Path
import flows  # first: Prefect's offline defaults
import pandas as pd
from prefect import flow
from prefect.testing.utilities import prefect_test_harness
from dataclasses import replace
from bbt.pipeline.clean import cast_of, run_clean
from bbt.config import DataParams, load_params
from flows.retrain import map_over_task_runner, task_runner

raw = sorted(p for p in Path("data/raw").rglob("*") if p.is_file())[:{images}]
subset = Path("bench/raw")
for path in raw:
    (subset / path.relative_to("data/raw")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, subset / path.relative_to("data/raw"))
reviews = pd.read_csv("data/annotations.csv", dtype=str)
kept = {{str(p.relative_to("data/raw")) for p in raw}}
reviews[reviews.image.isin(kept)].to_csv("bench/annotations.csv", index=False)
data, params = DataParams(subset, Path("bench/annotations.csv")), load_params().clean
cast = replace(cast_of(load_params()), min_faces=0)  # a subset of the photos: too few faces to train on
timings = {{}}
started = time.perf_counter(); run_clean(data, params, cast); timings["process pool (dvc repro)"] = time.perf_counter() - started
# A temporary Prefect server the Dask workers can reach too.
with prefect_test_harness(server_startup_timeout=180):
    for name, address in (("Prefect tasks on threads (flow default)", None), ("Prefect tasks on Dask, 2 workers", "local")):
        @flow(name="bench-clean", task_runner=task_runner(address))
        def bench() -> float:
            started = time.perf_counter()
            run_clean(data, params, cast, map_batches=map_over_task_runner, batch_size={batch_size})
            return time.perf_counter() - started
        timings[name] = bench()
print(json.dumps(timings))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=os.environ | {"PYTHONPATH": str(root)},
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"the timing run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    project = copy_project(Path(tempfile.mkdtemp(prefix="bbt-bench-flow-")))
    os.environ.update(project.env)
    project.run("dvc", "pull", "-q", "data.dvc")
    print(f"clean stage, first {args.images} photos (batches of {args.batch_size}), load {os.getloadavg()[0]:.1f}:")
    for name, seconds in clean_timings(project.root, args.images, args.batch_size).items():
        print(f"  {name:42s} {seconds:6.1f} s  ({seconds / args.images * 1000:.0f} ms/photo)")


if __name__ == "__main__":
    main()
