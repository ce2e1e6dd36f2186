"""What the sharpness rule costs a served photo: `bbt.model.quality.sharpness` on the dataset's own face crops
(artifacts/faces/faces.npz, 128 px, as serving crops them), per face, and their measured sharpness.

    python benchmarks/sharpness.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bbt.artifacts import load_faces
from bbt.model.quality import sharpness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    crops = load_faces()["crops"]
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        measured = sharpness(crops)
        times.append((time.perf_counter() - start) / len(crops) * 1000)
    print(f"{len(crops)} face crops of {crops.shape[1]} px: sharpness {statistics.median(times):.3f} ms a face "
          f"(median of {args.repeats}); measured from {measured.min():.4f} to {measured.max():.4f}, "
          f"median {np.median(measured):.4f}")


if __name__ == "__main__":
    main()
