"""The per-photo detection cache: found only by the same photo, settings and code; damage is a miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bbt.pipeline.detection_cache import DETECTION_MODULES, Detected, DetectionCache, code_fingerprint
from bbt.vision.faces import Box, DetectorSettings

SETTINGS = DetectorSettings(detector="yunet", decode_side=1280)


def detected() -> Detected:
    crops = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    return Detected((Box(1, 2, 30, 30), Box(50, 60, 20, 20)), crops)


def test_an_entry_comes_back_exactly(tmp_path: Path) -> None:
    cache = DetectionCache(tmp_path, SETTINGS, 16)
    assert cache.load("photo-md5") is None
    cache.save("photo-md5", detected())
    found = cache.load("photo-md5")
    assert found is not None and found.boxes == detected().boxes and found.error is None
    assert np.array_equal(found.crops, detected().crops)
    assert cache.load("another-photo") is None


def test_other_settings_or_crop_size_do_not_see_it(tmp_path: Path) -> None:
    DetectionCache(tmp_path, SETTINGS, 16).save("photo-md5", detected())
    assert DetectionCache(tmp_path, DetectorSettings(detector="yunet", yunet_side=480), 16).load("photo-md5") is None
    assert DetectionCache(tmp_path, SETTINGS, 32).load("photo-md5") is None
    assert DetectionCache(tmp_path, SETTINGS, 16).load("photo-md5") is not None


def test_failures_and_photos_without_faces_are_kept_too(tmp_path: Path) -> None:
    cache = DetectionCache(tmp_path, SETTINGS, 16)
    cache.save("broken", Detected(error="broken.jpg is not a recognised image"))
    cache.save("empty", Detected((), np.zeros((0, 16, 16, 3), np.uint8)))
    assert cache.load("broken") == Detected(error="broken.jpg is not a recognised image")
    empty = cache.load("empty")
    assert empty is not None and empty.boxes == () and empty.error is None


def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path: Path) -> None:
    cache = DetectionCache(tmp_path, SETTINGS, 16)
    cache.save("photo-md5", detected())
    cache.path("photo-md5").write_bytes(b"half an entry")
    assert cache.load("photo-md5") is None
    cache.save("photo-md5", detected())
    assert cache.load("photo-md5") is not None
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_key_covers_the_detection_code(tmp_path: Path) -> None:
    root = Path(code_fingerprint.__code__.co_filename).parents[2]
    for name in DETECTION_MODULES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((root / name).read_bytes())
    assert code_fingerprint(tmp_path) == code_fingerprint()
    with (tmp_path / "bbt/vision/faces.py").open("a") as faces:
        faces.write("\nHOG_BOX_SCALE = 1.2\n")
    assert code_fingerprint(tmp_path) != code_fingerprint()


def test_prune_drops_other_code_versions_and_keeps_other_settings(tmp_path: Path) -> None:
    old_code = DetectionCache(tmp_path, SETTINGS, 16, code="0" * 64)
    old_code.save("photo-md5", detected())
    other_settings = DetectionCache(tmp_path, DetectorSettings(detector="hog"), 16)
    other_settings.save("photo-md5", detected())
    current = DetectionCache(tmp_path, SETTINGS, 16)
    current.save("photo-md5", detected())
    (tmp_path / "stray.txt").write_text("left by hand")
    current.prune()
    assert old_code.load("photo-md5") is None
    assert other_settings.load("photo-md5") is not None and current.load("photo-md5") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [current.code[:16]]
