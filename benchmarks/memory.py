"""Memory and responsiveness of `bbt serve` under the largest photos it admits and under decode bombs.

    python benchmarks/memory.py --project .        # starts `bbt serve` there on a free port
    python benchmarks/memory.py --per-pixel        # decode_photo's peak bytes per pixel, format by mode

`--per-pixel` decodes a 20-megapixel image of each format and mode in a fresh process and prints the growth of
its resident memory per pixel: the figures behind bbt.vision.images.PEAK_BYTES_PER_PIXEL.

Prints, for the server's whole process tree (supervisor and workers):
- its memory idle, and at peak while 10 clients each send a photo at the limits (40 megapixels, as JPEG, as
  WebP, the costliest format to decode, and as PNG) until it is answered (a 503 is retried after its
  Retry-After), as resident set (RSS, pages shared by the forked workers counted in each) and as proportional
  set (PSS, each page counted once: what the systemd unit's MemoryMax and the kernel count);
- how fast `/readyz` answers while 4 clients send decode bombs without pause (a JPEG repeating its last scan,
  a 334-byte JPEG declaring 6000x6000, a flat 40-megapixel PNG of a few KB, a 40-megapixel WebP).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.bombs

from load import free_port, photos, start_server, stop_server, tree_cpu, wait_ready

from tests.bombs import exif_bomb, fill_bomb, hidden_scan_bomb

CLIENTS = 10
BOMB_CLIENTS = 4


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pss(pid: int) -> int:
    """Proportional set size from /proc (smaps_rollup is cheap to read, unlike smaps)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of the process tree, in bytes."""
    rss = total_pss = 0
    for process in tree(pid):
        try:
            rss += process.memory_info().rss
            total_pss += pss(process.pid)
        except psutil.NoSuchProcess:
            continue
    return rss, total_pss


class Sampler(threading.Thread):
    """Samples the tree's memory every 50 ms and keeps the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_pss, self.running = pid, 0, 0, True

    def run(self) -> None:
        while self.running:
            rss, total_pss = memory(self.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, total_pss)
            time.sleep(0.05)


def at_the_limit(photo: bytes, megapixels: float, fmt: str) -> bytes:
    """A dataset photo scaled up to `megapixels` and encoded as `fmt` (PNG: the photo in a flat canvas, which
    compresses to little, as a PNG decode bomb does)."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    scale = math.sqrt(megapixels * 1e6 / (image.width * image.height))
    size = (int(image.width * scale), int(image.height * scale))
    if fmt == "PNG":
        canvas = Image.new("RGB", size, (90, 90, 90))
        image.thumbnail((1000, 1000))
        canvas.paste(image, (size[0] // 3, size[1] // 3))
        image = canvas
    else:
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 80} if fmt != "PNG" else {"compress_level": 9}))
    return buffer.getvalue()


def scan_bomb() -> bytes:
    """A 2000x2000 grey progressive JPEG whose last scan is repeated (issue 12)."""
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * 5000 + data[-2:]


def forged_size_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, "JPEG")
    data = buffer.getvalue()
    sof = data.find(b"\xff\xc0")
    return data[:sof + 5] + (6000).to_bytes(2, "big") * 2 + data[sof + 9:]


def send_until_answered(url: str, name: str, data: bytes, statuses: list[int], lock: threading.Lock) -> None:
    with httpx.Client(timeout=120) as client:
        while True:
            response = client.post(f"{url}/classify", files={"image": (name, data)})
            with lock:
                statuses.append(response.status_code)
            if response.status_code not in (429, 503):  # busy, or this address's uploads are at their cap
                return
            time.sleep(float(response.headers.get("retry-after", "1")))


def largest_photos(url: str, pid: int, uploads: list[tuple[str, bytes]]) -> dict[str, float]:
    sampler = Sampler(pid)
    sampler.start()
    statuses: list[int] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=send_until_answered, args=(url, name, data, statuses, lock))
               for name, data in uploads]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sampler.running = False
    sampler.join()
    return {"seconds": time.perf_counter() - start, "peak_rss": sampler.peak_rss, "peak_pss": sampler.peak_pss,
            "ok": statuses.count(200), "busy": statuses.count(503) + statuses.count(429),
            "other": len(statuses) - statuses.count(200) - statuses.count(503) - statuses.count(429)}


def readyz_under_bombs(url: str, pid: int, bombs: list[tuple[str, bytes]], seconds: float) -> dict[str, float]:
    """Clients send bombs without pause while /readyz is probed; then how long the slowest bomb took to answer,
    and the server's CPU in the second that starts 1 s after the last answer (issue 26: idle by then)."""
    stop = time.monotonic() + seconds
    statuses: list[int] = []
    answered: list[float] = []
    lock = threading.Lock()

    def bomber(index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = index
            while time.monotonic() < stop:
                name, data = bombs[i % len(bombs)]
                start = time.perf_counter()
                status = client.post(f"{url}/classify", files={"image": (name, data)}).status_code
                with lock:
                    statuses.append(status)
                    answered.append(time.perf_counter() - start)
                i += 1

    threads = [threading.Thread(target=bomber, args=(i,)) for i in range(BOMB_CLIENTS)]
    for thread in threads:
        thread.start()
    latencies, failures = [], 0
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                ok = client.get(f"{url}/readyz").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            failures += not ok
            time.sleep(0.1)
    for thread in threads:
        thread.join()
    time.sleep(1)
    used = tree_cpu(pid)
    time.sleep(1)
    return {"probes": len(latencies), "failed": failures, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)), "max": max(latencies), "bombs": len(statuses),
            "bomb_503": statuses.count(503), "bomb_504": statuses.count(504),
            "bomb_other_5xx": sum(s >= 500 and s not in (503, 504) for s in statuses), "slowest_answer": max(answered),
            "cpu_1s_after": tree_cpu(pid) - used}


def report(what: str, figures: dict[str, float], show: Callable[[str, float], str]) -> None:
    print(f"{what}: " + ", ".join(show(k, v) for k, v in figures.items()))


def mib(key: str, value: float) -> str:
    return f"{key} {value / 2**20:.0f} MiB" if key.startswith("peak") or key in ("rss", "pss") else \
        f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"


PER_PIXEL_CASES = [("TIFF", mode) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")] + \
    [("PNG", "RGB"), ("PNG", "RGBA"), ("BMP", "RGB"), ("GIF", "P"), ("WEBP", "RGB"), ("JPEG", "RGB")]
PER_PIXEL_PROBE = """
import ctypes, io, sys, threading, time
import numpy as np
from PIL import Image
from bbt.serving.allocator import return_big_frees_to_the_os
from bbt.vision.images import decode_photo
return_big_frees_to_the_os()  # as the service does
fmt, mode, width, height = sys.argv[1], sys.argv[2], 5000, 4000
noise = np.random.default_rng(0).integers(0, 255, (height // 8, width // 8, 3), np.uint8)
image = Image.fromarray(noise).resize((width, height))
image = image.convert(mode) if mode != "RGB" else image
buffer = io.BytesIO()
image.save(buffer, fmt)
data = buffer.getvalue()
del image, buffer
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
start = peak = rss()
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.001)
watcher = threading.Thread(target=watch)
watcher.start()
decode_photo(data, "probe", 50_000_000)
done = True
watcher.join()
print((peak - start) / (width * height))
"""


def per_pixel_peaks() -> None:
    from bbt.vision.images import peak_bytes_per_pixel

    print("| format | mode | peak bytes per pixel (measured) | budgeted |\n|---|---|---|---|")
    for fmt, mode in PER_PIXEL_CASES:
        measured = subprocess.run([sys.executable, "-c", PER_PIXEL_PROBE, fmt, mode], capture_output=True,
                                  text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
        print(f"| {fmt} | {mode} | {float(measured):.1f} | {peak_bytes_per_pixel(fmt)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a trained project (dvc repro done)")
    parser.add_argument("--megapixels", type=float, default=0, help="photo size (default: serve.max_megapixels)")
    parser.add_argument("--bomb-seconds", type=float, default=30)
    parser.add_argument("--per-pixel", action="store_true", help="only decode_photo's peak bytes per pixel")
    args = parser.parse_args()
    if args.per_pixel:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        per_pixel_peaks()
        return
    project = args.project.resolve()
    sys.path.insert(0, str(project))
    from bbt.config import load_params

    serve = load_params(project / "params.yaml").serve
    megapixels = (args.megapixels or serve.max_megapixels) * 0.999
    sample = photos(project, 0, largest=1)[0][1]
    uploads = {fmt: at_the_limit(sample, megapixels, fmt) for fmt in ("JPEG", "WEBP", "PNG")}
    for fmt, data in uploads.items():
        print(f"{fmt} at {megapixels:.1f} MP: {len(data) / 2**20:.2f} MiB upload")
    port = free_port()
    server = start_server("bentoml", project, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "/readyz")
        name, data = photos(project, 1)[0]
        httpx.post(f"{url}/classify", files={"image": (name, data)}, timeout=60)  # warm
        time.sleep(2)
        rss, idle_pss = memory(server.pid)
        print(f"workers: {len(tree(server.pid)) - 1} processes; serve.worker_memory_mb {serve.worker_memory_mb:g}")
        report("idle", {"rss": rss, "pss": idle_pss}, mib)
        for fmt, data in uploads.items():
            figures = largest_photos(url, server.pid, [(f"limit-{i}.{fmt.lower()}", data) for i in range(CLIENTS)])
            report(f"{CLIENTS} clients x {fmt} {megapixels:.0f} MP", figures, mib)
        bombs = [("scans.jpg", scan_bomb()), ("forged.jpg", forged_size_jpeg()), ("flat.png", uploads["PNG"]),
                 ("large.webp", uploads["WEBP"]), ("hidden-scans.jpg", hidden_scan_bomb()),
                 ("fill.jpg", fill_bomb()), ("exif.jpg", exif_bomb())]
        figures = readyz_under_bombs(url, server.pid, bombs, args.bomb_seconds)
        report(f"/readyz under {BOMB_CLIENTS} clients sending decode bombs for {args.bomb_seconds:g} s", figures,
               lambda k, v: f"{k} {v * 1000:.0f} ms" if k in ("p50", "p99", "max", "slowest_answer")
               else f"{k} {v:.2f} s" if k == "cpu_1s_after" else f"{k} {v}")
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
