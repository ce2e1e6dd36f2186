"""Where a request's CPU goes on the served path, stage by stage, over the dataset's photos.

    python benchmarks/profile.py [--project PATH] [--limit N]

Runs the service's own code in this one thread (OpenCV and onnxruntime on one thread each, as in the service)
on every distinct photo of data/raw, with the project's registered champion (`bbt register` first):
multipart (starlette's parser, as FastAPI runs it, on the body a browser sends), decode (with the model's
decode_side), detect, crop, align (dlib's 5 landmarks and the aligned chip), embed (the ResNet on
onnxruntime), classify (the classifier head and the open-set rule) and JSON (the response model, serialized).
Align and embed are timed on the same crops by calling those two steps directly; "features" in the service's
/metrics is their sum. CPU time of this thread (time.thread_time), so other load on the machine moves it little.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_faces import served_classifier

STAGES = ("multipart", "decode", "detect", "crop", "align", "embed", "classify", "json")
BOUNDARY = "bbtprofileboundary"


def multipart_body(name: str, data: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def parse_multipart(body: bytes) -> bytes:
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def stream() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):  # uvicorn hands the body over in chunks of this order
            yield body[i:i + 64 * 1024]
        yield b""

    headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    form = await MultiPartParser(headers, stream(), max_part_size=64 * 1024 * 1024).parse()
    return await form["image"].read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a trained project (dvc repro, bbt register)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos (0: all)")
    args = parser.parse_args()
    root = args.project.resolve()

    import cv2

    from bbt.config import load_params
    from bbt.pipeline.clean import list_images
    from bbt.serving.admission import MB
    from bbt.serving.contract import Classification, Face, ImageSize, ModelInfo
    from bbt.serving.upload_limits import keep_uploads_in_memory
    from bbt.vision.embeddings import FaceEmbeddings, resnet
    from bbt.vision.images import ImageError, decode_photo

    cv2.setNumThreads(1)
    times: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.thread_time()
        try:
            yield
        finally:
            times[stage][-1] += time.thread_time() - start

    classifier = served_classifier(root)
    keep_uploads_in_memory(int(load_params(root / "params.yaml").serve.max_upload_mb * MB))  # as the service does
    embedder = FaceEmbeddings()
    info = ModelInfo(name="bbt-actor-classifier", version="profile", open_set_rule=classifier.model.rule)
    raw = root / "data/raw"
    paths = list_images(raw)
    seen, faces_per_photo = set(), []
    for path in paths:
        data = (raw / path).read_bytes()
        if data in seen:
            continue
        seen.add(data)
        if args.limit and len(seen) > args.limit:
            break
        for stage in (*STAGES, "features"):
            times[stage].append(0.0)
        with timed("multipart"):
            body = asyncio.run(parse_multipart(multipart_body(os.path.basename(path), data)))
        try:
            with timed("decode"):
                photo = decode_photo(body, path, min_side=classifier.decode_side)
        except ImageError:
            for values in times.values():
                values.pop()
            continue
        faces = classifier.classify(photo, timed)  # times detect, crop, features, classify
        faces_per_photo.append(len(faces))
        if faces:
            from bbt.vision.faces import crop_photo_face

            crops = np.stack([crop_photo_face(photo, f.box, classifier.crop_size) for f in faces])
            with timed("align"):
                chips = np.stack([embedder._aligned_chip(crop) for crop in crops])
            with timed("embed"):
                resnet()(chips)
        with timed("json"):
            Classification(faces=[Face.model_validate(f.as_dict()) for f in faces], model=info,
                           image=ImageSize(width=photo.size[0], height=photo.size[1])).model_dump_json()

    n = len(faces_per_photo)
    served = [s for s in STAGES]
    total = np.sum([times[s] for s in served], axis=0)
    print(f"{n} photos, {sum(faces_per_photo)} faces ({np.mean(faces_per_photo):.2f} a photo); "
          f"detector {classifier.detector.settings.detector}; CPU ms per photo (this thread)")
    print("| stage | mean | p50 | p90 | share |\n|---|---|---|---|---|")
    for stage in served:
        values = 1000 * np.array(times[stage])
        print(f"| {stage} | {values.mean():.1f} | {np.median(values):.1f} | {np.quantile(values, 0.9):.1f} | "
              f"{values.sum() / (1000 * total.sum()):.0%} |")
    print(f"| total | {1000 * total.mean():.1f} | {1000 * np.median(total):.1f} | "
          f"{1000 * np.quantile(total, 0.9):.1f} | 100% |")
    features = 1000 * np.array(times["features"])
    print(f"(the service's 'features' stage, align + embed, measured inside it: {features.mean():.1f} ms a photo; "
          f"per face: align {1000 * sum(times['align']) / max(sum(faces_per_photo), 1):.2f} ms, "
          f"embed {1000 * sum(times['embed']) / max(sum(faces_per_photo), 1):.2f} ms)")


if __name__ == "__main__":
    main()
