"""Per-photo detections (boxes and face crops) kept between `clean` runs, so a run redoes only the new photos.

An entry is found by the photo's content hash and everything else that decides its detections: the detector
settings, the crop size, the source of the modules that detect and crop, and the versions of the libraries
they call. Reviews are not part of it: they are matched to the cached boxes on every run. Entries are written
atomically (a temporary file, then a rename), so a crash or a parallel run never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bbt.vision.faces import DETECTORS, Box, DetectorSettings

# An entry: this line, a JSON header line (context, error, boxes, crop array shape), then the crops' raw bytes.
# Raw bytes, not .npz: reading 400 entries as .npz cost more than detecting a few photos.
MAGIC = b"bbt-detections 1\n"
# The code whose changes change detections, and the libraries it runs on (each registered detector's own too):
# the cache key covers their source and versions.
DETECTION_MODULES = tuple(dict.fromkeys(["bbt/vision/faces.py", "bbt/vision/images.py",
                                         *(m for detector in DETECTORS.values() for m in detector.modules)]))
DETECTION_PACKAGES = tuple(dict.fromkeys(["opencv-python-headless", "pillow", "numpy",
                                          *(p for detector in DETECTORS.values() for p in detector.packages)]))


@dataclass(frozen=True)
class Detected:
    """What detection found in one photo: boxes in the photo's pixels and their crops, or why it failed."""

    boxes: tuple[Box, ...] = ()
    crops: np.ndarray | None = None  # (len(boxes), crop_size, crop_size, 3) uint8
    error: str | None = None


def code_fingerprint(root: Path = Path(__file__).parents[2]) -> str:
    """A hash of the detection code (under the project `root`) and the versions of the libraries it runs on."""
    digest = hashlib.sha256()
    for name in DETECTION_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    for name in DETECTION_PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()


class DetectionCache:
    """The entries of one detector setting and crop size under `folder`, in a folder per version of the
    detection code: `folder/<code>/<settings>/<key[:2]>/<key>`. Other settings' entries are kept (switching
    back finds them); other code versions' can never be found again, and `prune` removes them."""

    def __init__(self, folder: Path, settings: DetectorSettings, crop_size: int,
                 code: str | None = None) -> None:
        self.folder = folder
        self.code = code or code_fingerprint()
        self.context = json.dumps({"settings": asdict(settings), "crop_size": crop_size, "code": self.code},
                                  sort_keys=True)
        self.entries = folder / self.code[:16] / hashlib.sha256(self.context.encode()).hexdigest()[:16]

    def path(self, photo_digest: str) -> Path:
        key = hashlib.sha256(f"{photo_digest}\0{self.context}".encode()).hexdigest()
        return self.entries / key[:2] / key

    def prune(self) -> None:
        """Remove the entries of other versions of the detection code (and anything else) under `folder`."""
        if not self.folder.is_dir():
            return
        for child in self.folder.iterdir():
            if child.name == self.code[:16]:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def load(self, photo_digest: str) -> Detected | None:
        """The photo's cached detections, or None (never cached, or an entry that cannot be read)."""
        try:
            data = self.path(photo_digest).read_bytes()
            if not data.startswith(MAGIC):
                return None
            end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC):end])
            if header["context"] != self.context:  # a hash collision, however unlikely
                return None
            if header["error"]:
                return Detected(error=header["error"])
            crops = np.frombuffer(data, np.uint8, offset=end + 1).reshape(header["shape"]).copy()
            return Detected(tuple(Box(*b) for b in header["boxes"]), crops)
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def save(self, photo_digest: str, detected: Detected) -> None:
        path = self.path(photo_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        crops = detected.crops if detected.crops is not None else np.zeros((0, 1, 1, 3), np.uint8)
        header = {"context": self.context, "error": detected.error or "",
                  "boxes": [[b.x, b.y, b.w, b.h] for b in detected.boxes], "shape": list(crops.shape)}
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(MAGIC + json.dumps(header).encode() + b"\n")
                out.write(np.ascontiguousarray(crops, np.uint8).tobytes())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
