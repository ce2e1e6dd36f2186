"""What the photo processes' boundary costs (bbt/serving/sandbox.py): CPU a photo, and the time to fork one.

    python benchmarks/sandbox.py --project .            # the first 60 dataset JPEGs, 3 rounds

A decode-only stand-in for the model runs in the photo process (tests/unit/serving/sandbox_work.py), so the only
difference between the two columns is the boundary (the bytes sent over a socket pair, one JSON request and one
JSON answer) and the photo processes' allocator setting; "in-process" decodes in this process with the worker's
old setting (blocks over 1 MB mapped afresh). CPU is counted in both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.unit.serving.sandbox_work


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a project with data/raw pulled")
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import cv2

    from bbt.serving.allocator import return_big_frees_to_the_os
    from bbt.serving.sandbox import Sandboxes
    from bbt.vision.images import decode_cost, decode_photo
    from tests.unit.serving.sandbox_work import OneFace

    files = sorted((args.project / "data" / "raw").rglob("*.jpg"))[:args.photos]
    photos = [path.read_bytes() for path in files]
    pool = Sandboxes("tests.unit.serving.sandbox_work:one_face", "0", 1, 40_000_000, 31)
    here, there = psutil.Process(), psutil.Process(pool._idle[0].pid)
    return_big_frees_to_the_os()  # the worker's setting, for the in-process column
    cv2.setNumThreads(1)
    work = OneFace()

    async def through_the_boundary() -> None:
        for data in photos:
            await pool.classify(data, "photo", time.monotonic() + 30, lambda cost: None)

    print(f"{len(photos)} JPEGs, {sum(map(len, photos)) / len(photos) / 1e3:.0f} kB on average; CPU ms a photo")
    print("| round | photo process (both processes) | in-process (old worker setting) |\n|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        start = cpu_seconds(here) + cpu_seconds(there)
        asyncio.run(through_the_boundary())
        sandboxed = cpu_seconds(here) + cpu_seconds(there) - start
        start = cpu_seconds(here)
        for data in photos:
            decode_cost(data, work.decode_side)
            work.classify(decode_photo(data, "photo", 40_000_000, work.decode_side), lambda stage: nullcontext())
        inline = cpu_seconds(here) - start
        print(f"| {round_} | {sandboxed / len(photos) * 1000:.1f} | {inline / len(photos) * 1000:.1f} |")
    forks = []
    for _ in range(5):
        start = time.perf_counter()
        process = pool._fork()
        forks.append((time.perf_counter() - start) * 1000)
        process.kill()
    print("fork of a photo process: " + ", ".join(f"{ms:.0f}" for ms in forks) + " ms")
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    pool.close()


if __name__ == "__main__":
    main()
