"""Would adaptive batching help /classify? Batching across requests pays only where a stage costs less per item
in a batch. The batchable stage is the face descriptor (dlib's ResNet on onnxruntime, one thread as in a photo
process): this times it on chips one at a time against batches of several, per chip.

    python benchmarks/batching.py [--chips 64] [--repeats 5]

Decoding and detection work on one photo at a time (different sizes), so they do not batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bbt.vision.embeddings import resnet


def per_chip_ms(model, chips: np.ndarray, batch: int, repeats: int) -> float:
    """The median over `repeats` of the time per chip when `chips` go through in batches of `batch`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(chips), batch):
            model(chips[i:i + batch])
        times.append((time.perf_counter() - start) / len(chips) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = resnet()
    chips = np.random.default_rng(0).integers(0, 256, (args.chips, 150, 150, 3), dtype=np.uint8)
    model(chips[:1])  # warm-up
    print(f"load average {os.getloadavg()[0]:.1f}; {args.chips} chips of 150x150, median of {args.repeats}")
    single = per_chip_ms(model, chips, 1, args.repeats)
    for batch in (1, 2, 4, 8, 16):
        ms = single if batch == 1 else per_chip_ms(model, chips, batch, args.repeats)
        print(f"batch {batch:2d}: {ms:.2f} ms per chip ({(1 - ms / single) * 100:+.0f}% saved against one at a time)")


if __name__ == "__main__":
    main()
