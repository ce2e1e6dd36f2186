"""How the cost of `clean` follows what changed: from scratch, nothing changed, +5 photos, and a 10x dataset.

    python benchmarks/clean_scaling.py [--project PATH] [--copies 9] [--dask]

Works in a scratch folder (the project's own cache and products are not touched): data/raw of the project,
its annotations and second review. Each step runs the stage function (`run_clean`, as `bbt clean` does, minus
the CLI's start-up) and prints its wall time:
  1. the dataset from scratch (empty detection cache), 2. again with nothing changed, 3. after adding 5 new
  photos (5 photos re-encoded, so new content), 4. a synthetic 10x dataset (every photo re-encoded `--copies`
  times as JPEG at other qualities) from scratch on the local process pool, 5. +5 photos on it, and with
  --dask 6. the 10x dataset from scratch on a local Dask cluster (2 workers of 1 thread) through the same
  batch mapper interface the Prefect flow uses.
The products of steps 2 and 3 are compared with a from-scratch run of the same data: they must be byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt import artifacts
from bbt.config import load_params
from bbt.pipeline.clean import cast_of, run_clean


def reencoded(path: Path, quality: int) -> bytes:
    with Image.open(path) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality)
        return out.getvalue()


def products_digest() -> str:
    digest = hashlib.sha256()
    for path in (artifacts.FACES, artifacts.DETECTIONS, artifacts.CLEAN_REPORT):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def timed_clean(label: str, params, **kwargs) -> float:
    start = time.perf_counter()
    report = run_clean(params.data, params.clean, cast_of(params), **kwargs)
    seconds = time.perf_counter() - start
    print(f"| {label} | {report['total']['images']} | {seconds:.1f} s |", flush=True)
    return seconds


def dask_mapper(client):
    def map_batches(batches, work):
        return client.gather(client.map(work, batches, pure=False))
    return map_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--copies", type=int, default=9, help="re-encoded copies of each photo for the big dataset")
    parser.add_argument("--dask", action="store_true", help="also run the big dataset on a local Dask cluster")
    args = parser.parse_args()
    project = args.project.resolve()
    params = load_params(project / "params.yaml")
    scratch = Path(tempfile.mkdtemp(prefix="bbt-clean-scaling-"))
    try:
        for name in ("data/raw", "data/annotations.csv", "review/corrections.csv"):
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (project / name).is_dir() else shutil.copy)(project / name, scratch / name)
        os.chdir(scratch)
        raw = scratch / "data/raw"
        originals = sorted(p for p in raw.rglob("*") if p.is_file())
        print(f"clean.workers {params.clean.workers}, detector {params.clean.detector}; wall time of run_clean")
        print("| run | photos | time |\n|---|---|---|")
        scratch_time = timed_clean("from scratch (empty cache)", params)
        timed_clean("nothing changed", params)
        for i, path in enumerate(originals[:5]):
            (path.parent / f"added {i}.jpg").write_bytes(reencoded(path, 80))
        added = timed_clean("+5 photos", params)
        incremental = products_digest()
        shutil.rmtree(artifacts.CLEAN_CACHE)
        timed_clean("+5 photos, from scratch (for comparison)", params)
        print(f"\n+5 photos took {added / scratch_time:.1%} of a from-scratch clean; products identical to a "
              f"from-scratch run: {incremental == products_digest()}\n")

        print("| run | photos | time |\n|---|---|---|")
        for copy in range(args.copies):
            for path in originals:
                (path.parent / f"{path.name} copy {copy}.jpg").write_bytes(reencoded(path, 90 - copy))
        shutil.rmtree(artifacts.CLEAN_CACHE)
        big = timed_clean(f"{args.copies + 1}x dataset from scratch, process pool", params)
        for i, path in enumerate(originals[5:10]):
            (path.parent / f"added later {i}.jpg").write_bytes(reencoded(path, 70))
        big_added = timed_clean(f"{args.copies + 1}x dataset +5 photos", params)
        print(f"\n+5 photos on the {args.copies + 1}x dataset took {big_added / big:.1%} of its from-scratch clean")
        if args.dask:
            from dask.distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                shutil.rmtree(artifacts.CLEAN_CACHE)
                timed_clean(f"{args.copies + 1}x dataset +5 from scratch, Dask (2 workers)", params,
                            map_batches=dask_mapper(client), batch_size=32)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
