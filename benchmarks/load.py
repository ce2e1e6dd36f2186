"""Closed-loop load test: N clients post real dataset photos for a fixed time; prints req/s, p50, p99, errors, RSS.

    python benchmarks/load.py --project .                      # starts `bbt serve` there on a free port
    python benchmarks/load.py --url http://127.0.0.1:3000      # an already running server (RSS needs --pid)
    python benchmarks/load.py --project . --server reference   # the original Flask-style server, same photos
    python benchmarks/load.py --project . --server both        # both, one after the other, and their ratios
    python benchmarks/load.py --project . --largest 20 --clients 64   # a burst of the 20 largest photos

`--server reference` re-creates the original system's per-request work in Flask (base64 data URL, both Haar
cascades loaded on every request, full-resolution detection, pixel+wavelet features and an SVM), so both
servers can be measured on the same machine under the same load: this machine is shared, so absolute
figures move with whatever else runs; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bbt.serving.ready import NotReady, free_port, wait_until_ready

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)  # of the answered requests (200)
    errors: list[str] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # 503 or 429 answers with Retry-After: their latency
    lock: threading.Lock = field(default_factory=threading.Lock)


def photos(project: Path, limit: int, largest: int = 0) -> list[tuple[str, bytes]]:
    """The dataset's photos (name, bytes), in a fixed shuffled order; or only the `largest` biggest files."""
    files = sorted(p for p in (project / "data" / "raw").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        sys.exit(f"no photos under {project / 'data/raw'}: run `dvc pull` in {project} first")
    if largest:
        files = sorted(files, key=lambda p: (-p.stat().st_size, p))[:largest]
    random.Random(0).shuffle(files)
    return [(p.name, p.read_bytes()) for p in files[:limit or None]]


def start_server(kind: str, project: Path, port: int) -> subprocess.Popen:
    """Start a server in its own process group, so it can be stopped with everything it spawned."""
    venv = Path(sys.executable).parent
    if kind == "bentoml":
        command = [str(venv / "bbt"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--run-reference", "--port", str(port)]
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen(command, cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server started by start_server and everything it spawned (its process group)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def wait_ready(url: str, ready_path: str, timeout: float = 180) -> None:
    """Wait for the server to answer 200 at `ready_path`; exit with the reason when it does not."""
    try:
        wait_until_ready(url + ready_path, timeout, 0.5)
    except NotReady as err:
        sys.exit(str(err))


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())
    except psutil.NoSuchProcess:
        return 0


def request_for(kind: str, url: str, name: str, data: bytes) -> dict:
    if kind == "reference":
        data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        return {"url": url + "/classify_image", "data": {"image_data": data_url}}
    return {"url": url + "/classify", "files": {"image": (name, data)}}


def client(kind: str, url: str, images: list[tuple[str, bytes]], seed: int, stop_at: float,
           results: Results) -> None:
    """One closed-loop client: send the next photo as soon as the previous answer arrives."""
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    i = 0
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < stop_at:
            name, data = images[order[i % len(order)]]
            i += 1
            start = time.perf_counter()
            busy = False
            try:
                response = http.post(**request_for(kind, url, name, data))
                ok = response.status_code == 200
                busy = response.status_code in (429, 503) and "retry-after" in response.headers
                why = f"{response.status_code} {response.text[:120]}"
            except httpx.HTTPError as err:
                ok, why = False, f"{type(err).__name__}: {err}"
            elapsed = time.perf_counter() - start
            with results.lock:
                if ok:
                    results.latencies.append(elapsed)
                elif busy:
                    results.busy.append(elapsed)
                else:
                    results.errors.append(f"{name}: {why}")
            if busy:  # as a well-behaved client does
                time.sleep(float(response.headers["retry-after"]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and all its children (BentoML's workers and their photo processes)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(kind: str, url: str, images: list[tuple[str, bytes]], clients: int, seconds: float,
             pid: int | None) -> dict[str, float]:
    # Warm-up: every worker thread loads its cascades and the first requests pay for lazy imports.
    warm = Results()
    warm_threads = [threading.Thread(target=client, args=(kind, url, images, 100 + c, time.monotonic() + 3, warm))
                    for c in range(clients)]
    for thread in warm_threads:
        thread.start()
    for thread in warm_threads:
        thread.join()
    rss_start = tree_rss(pid) if pid else 0
    cpu_start = tree_cpu(pid) if pid else 0.0
    load_start = os.getloadavg()[0]
    results = Results()
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(kind, url, images, c, started + seconds, results))
               for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    rss_end = tree_rss(pid) if pid else 0
    cpu_used = tree_cpu(pid) - cpu_start if pid else 0.0
    n = len(results.latencies)
    print(f"server: {kind} at {url}; {clients} closed-loop clients for {seconds:.0f} s over {len(images)} photos")
    print(f"machine: {os.cpu_count()} cores, load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end (shared: other work on this machine slows every figure)")
    print(f"answered (200): {n} in {wall:.1f} s = {n / wall:.1f} requests/s")
    stats = {"rps": n / wall, "p50": 0.0, "p99": 0.0, "errors": len(results.errors), "busy": len(results.busy)}
    if n:
        stats["p50"], stats["p99"] = percentile(results.latencies, 50), percentile(results.latencies, 99)
        print(f"latency: p50 {stats['p50'] * 1000:.0f} ms, p99 {stats['p99'] * 1000:.0f} ms, "
              f"mean {statistics.mean(results.latencies) * 1000:.0f} ms")
    if results.busy:
        print(f"busy (503 or 429 + Retry-After): {len(results.busy)}, answered in p99 "
              f"{percentile(results.busy, 99) * 1000:.0f} ms")
    print(f"errors: {len(results.errors)}" + (f" (first: {results.errors[0]})" if results.errors else ""))
    if pid:
        print(f"server RSS (all processes): {rss_start / 2**20:.0f} MiB after warm-up, "
              f"{rss_end / 2**20:.0f} MiB at end")
        if n:  # steadier than requests/s on a shared machine: what each answer cost, whatever else ran
            print(f"server CPU (all processes): {cpu_used / n * 1000:.1f} ms per answered request")
    return stats


def serve_reference(port: int) -> None:
    """The original system in Flask: per-request cascades, full-resolution Haar, 4096 pixel+wavelet features, SVM.

    Its model is fitted at start-up on the accepted faces of `bbt clean` (artifacts/faces/faces.npz) the way the
    original was (scaler + linear SVM), so the comparison does not depend on which feature set is champion.
    """
    importlib.import_module("bbt")  # first: it sets OpenCV's pixel limit before cv2 is imported
    import cv2
    import numpy as np
    from flask import Flask, jsonify, request
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from bbt.config import load_params
    from bbt.vision.faces import Box, crop_face
    from bbt.vision.features import PixelWaveletFeatures

    crop_size = load_params().clean.crop_size
    faces = np.load("artifacts/faces/faces.npz")
    pipeline = make_pipeline(PixelWaveletFeatures(), StandardScaler(), SVC(kernel="linear", probability=True))
    pipeline.fit(faces["crops"], faces["labels"])
    classes = [str(c) for c in pipeline.classes_]
    app = Flask("reference")

    @app.get("/ready")
    def ready():  # type: ignore[no-untyped-def]
        return "ok"

    @app.post("/classify_image")
    def classify_image():  # type: ignore[no-untyped-def]
        encoded = request.form["image_data"].split(",")[1]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR)
        # As the original did: both cascades loaded on every request.
        face_cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        eye_cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        answer = []
        for x, y, w, h in face_cascade.detectMultiScale(gray, 1.3, 5):
            if len(eye_cascade.detectMultiScale(gray[y:y + h, x:x + w])) >= 2:
                crop = crop_face(image, Box(int(x), int(y), int(w), int(h)), crop_size)
                proba = pipeline.predict_proba(crop[None])[0]
                answer.append({"class": classes[int(np.argmax(proba))],
                               "class_probability": np.around(proba * 100, 2).tolist(),
                               "class_dictionary": {c: i for i, c in enumerate(classes)}})
        return jsonify(answer)

    app.run(host="127.0.0.1", port=port, threaded=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="Project with data/raw and a champion.")
    parser.add_argument("--server", choices=("bentoml", "reference", "both"), default="bentoml")
    parser.add_argument("--url", help="Target a running server instead of starting one.")
    parser.add_argument("--pid", type=int, help="With --url: the server's process id, for RSS.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--photos", type=int, default=0, help="Use only the first N shuffled photos (0 = all).")
    parser.add_argument("--largest", type=int, default=0, help="Use only the N largest photo files (0 = all).")
    parser.add_argument("--run-reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_reference:
        return serve_reference(args.port)

    project = args.project.resolve()
    images = photos(project, args.photos, args.largest)
    if args.server == "both":
        if args.url:
            sys.exit("--server both starts both servers itself: drop --url")
        ours, reference = (measure(kind, project, images, args) for kind in ("bentoml", "reference"))
        print(f"bentoml vs reference: {ours['rps'] / reference['rps']:.1f}x the throughput, "
              f"{ours['p99'] / reference['p99']:.2f}x the p99")
        return
    measure(args.server, project, images, args)


def measure(kind: str, project: Path, images: list[tuple[str, bytes]], args: argparse.Namespace) -> dict[str, float]:
    """Start the server (unless --url), run the load, stop it; the figures."""
    server = None
    url, pid = args.url, args.pid
    if url is None:
        port = free_port()
        server = start_server(kind, project, port)
        url, pid = f"http://127.0.0.1:{port}", server.pid
        wait_ready(url, "/readyz" if kind == "bentoml" else "/ready")
    try:
        return run_load(kind, url.rstrip("/"), images, args.clients, args.seconds, pid)
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    main()
