"""The feedback store (bbt/review/feedback.py) and the checks of the /feedback route (bbt/serving/feedback_route.py), on generated
photos: what is kept and how, its bound, the order and robustness of items(), ids, and where the store is."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from PIL import Image
from starlette.datastructures import FormData, Headers, UploadFile

from bbt.config import ConfigError, ServeParams, load_params
from bbt.model.face_prediction import FacePrediction
from bbt.review.feedback import (
    FEEDBACK_DIR_ENV,
    ITEM_FILE,
    MB,
    Feedback,
    FeedbackError,
    FeedbackFull,
    FeedbackStore,
    feedback_folder,
    open_store,
    photo_suffix,
)
from bbt.serving.feedback_route import BadReport, matching_face, read_report
from bbt.vision.faces import Box
from bbt.vision.images import ImageError

WHEN = datetime(2026, 11, 27, 10, 11, 12, 345678, tzinfo=UTC)
BOX = Box(96, 149, 290, 290)


def photo_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def ticking(start: datetime = WHEN):
    """A clock that moves one second per call: each add gets its own id."""
    calls = iter(range(10_000))
    return lambda: start + timedelta(seconds=next(calls))


def add(store: FeedbackStore, photo: bytes, box: Box = BOX, user_label: str = "raj") -> Feedback:
    return store.add(photo, photo_suffix(photo), box, "sheldon", 0.93, user_label, "3")


def test_a_report_is_kept_as_uploaded_with_its_json(tmp_path: Path) -> None:
    photo = photo_bytes("PNG")
    store = FeedbackStore(tmp_path / "store", 10, clock=lambda: WHEN)
    item = add(store, photo)
    digest = hashlib.sha256(photo).hexdigest()[:12]
    assert item.id == f"20261127T101112Z-{digest}-96-149"
    assert item.folder == tmp_path / "store" / item.id and item.photo == item.folder / "photo.png"
    assert item.photo.read_bytes() == photo
    assert item.created == "2026-11-27T10:11:12Z"
    assert json.loads((item.folder / ITEM_FILE).read_text()) == {
        "id": item.id, "photo": "photo.png", "box": {"x": 96, "y": 149, "w": 290, "h": 290},
        "model_label": "sheldon", "model_confidence": 0.93, "user_label": "raj", "model_version": "3",
        "created": "2026-11-27T10:11:12Z"}
    assert sorted(p.name for p in item.folder.iterdir()) == ["feedback.json", "photo.png"]  # no temporary left
    assert store.items() == [item]


def test_a_local_clock_is_written_in_utc(tmp_path: Path) -> None:
    paris = datetime(2026, 11, 27, 11, 11, 12, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    item = add(FeedbackStore(tmp_path, 10, clock=lambda: paris), photo_bytes())
    assert item.id.startswith("20261127T111112Z-") and item.created == "2026-11-27T11:11:12Z"


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".gif"),
                                             ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_the_suffix_comes_from_the_bytes(fmt: str, suffix: str) -> None:
    assert photo_suffix(photo_bytes(fmt)) == suffix


def test_bytes_that_are_no_supported_photo_have_no_suffix() -> None:
    for data in (b"", b"not a photo", photo_bytes("ICO")):
        with pytest.raises(ImageError, match="cannot be kept"):
            photo_suffix(data)


def test_items_are_sorted_by_id_whatever_the_order_they_were_added(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, 10, clock=ticking())
    later = FeedbackStore(tmp_path, 10, clock=ticking(WHEN + timedelta(hours=1)))
    added = [add(later, photo_bytes(seed=1)), add(store, photo_bytes(seed=2)), add(store, photo_bytes(seed=3))]
    assert [item.id for item in store.items()] == sorted(item.id for item in added)
    assert store.items() == sorted(added, key=lambda item: item.id)


def test_folders_without_a_valid_report_are_skipped(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, 10, clock=ticking())
    good = add(store, photo_bytes())

    def broken(name: str, record: dict | str | None, photo: bool = True) -> None:
        folder = tmp_path / name
        folder.mkdir()
        if photo:
            (folder / "photo.jpg").write_bytes(photo_bytes())
        if record is not None:
            (folder / ITEM_FILE).write_text(record if isinstance(record, str) else json.dumps(record))

    valid = json.loads((good.folder / ITEM_FILE).read_text())
    broken("0-no-json", None)
    broken("1-not-json", "{\"id\": ")
    broken("2-a-list", "[1, 2]")
    broken("3-other-id", valid)  # the json names another folder's id
    broken("4-no-photo", {**valid, "id": "4-no-photo"}, photo=False)
    broken("5-photo-outside", {**valid, "id": "5-photo-outside", "photo": "../elsewhere.jpg"})
    broken("6-bad-box", {**valid, "id": "6-bad-box", "box": {"x": 1, "y": 2}})
    broken("7-bad-label", {**valid, "id": "7-bad-label", "user_label": "Penny!"})
    broken("8-missing-key", {k: v for k, v in {**valid, "id": "8-missing-key"}.items() if k != "model_version"})
    (tmp_path / "9-a-file").write_text("not a folder")
    assert store.items() == [good]
    (good.folder / "verdict.json").write_text("{}")  # the review app's verdict does not change the item
    assert store.items() == [good]


def test_a_crash_before_the_json_is_in_place_leaves_no_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeedbackStore(tmp_path, 10, clock=ticking())
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 2:  # the json, written after the photo
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space"):
        add(store, photo_bytes())
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (folder / "photo.jpg").is_file() and not (folder / ITEM_FILE).exists()
    assert store.items() == []
    monkeypatch.undo()
    assert len(store.items()) == 0 and add(store, photo_bytes()).id in [i.id for i in store.items()]


def test_the_store_refuses_past_its_bound_and_keeps_nothing_then(tmp_path: Path) -> None:
    photo = photo_bytes(size=(200, 200))
    store = FeedbackStore(tmp_path / "store", 3 * len(photo) / MB, clock=ticking())
    kept = [add(store, photo), add(store, photo)]
    before = sorted(p for p in (tmp_path / "store").rglob("*"))
    with pytest.raises(FeedbackFull, match=r"full .* nothing was kept.*feedback_max_mb"):
        add(store, photo)
    assert sorted(p for p in (tmp_path / "store").rglob("*")) == before
    assert store.items() == kept and store.size_bytes() <= store.max_bytes


def test_the_same_report_in_the_same_second_is_kept_once(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, 10, clock=lambda: WHEN)
    item = add(store, photo_bytes())
    with pytest.raises(FeedbackError, match="already kept"):
        add(store, photo_bytes(), user_label="howard")
    assert store.items() == [item]
    assert add(store, photo_bytes(), box=Box(1, 2, 30, 30)).id.endswith("-1-2")  # another face of the photo


def test_a_user_answer_that_is_no_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match="neither a person's name nor 'unknown'"):
        add(FeedbackStore(tmp_path, 10), photo_bytes(), user_label="Penny!")
    assert FeedbackStore(tmp_path, 10).items() == []


def test_an_empty_or_missing_store_has_no_items(tmp_path: Path) -> None:
    assert FeedbackStore(tmp_path / "absent", 10).items() == []
    assert FeedbackStore(tmp_path / "absent", 10).size_bytes() == 0
    assert not (tmp_path / "absent").exists()  # reading never creates the folder


# ---- where the store is -----------------------------------------------------------------------------------------

def test_the_folder_comes_from_params_unless_the_environment_says(tmp_path: Path) -> None:
    on = ServeParams(feedback_dir="feedback")
    assert feedback_folder(ServeParams(), {}, tmp_path) is None, "off by default"
    assert feedback_folder(on, {}, tmp_path) == tmp_path / "feedback", "relative to the working directory"
    assert feedback_folder(ServeParams(feedback_dir="/srv/fb"), {}, tmp_path) == Path("/srv/fb")
    assert feedback_folder(on, {FEEDBACK_DIR_ENV: ""}, tmp_path) is None, "a deployment turns it off"
    assert feedback_folder(ServeParams(), {FEEDBACK_DIR_ENV: "/var/lib/bbt/feedback"}, tmp_path) == \
        Path("/var/lib/bbt/feedback")
    assert open_store(on, {FEEDBACK_DIR_ENV: ""}, tmp_path) is None
    store = open_store(ServeParams(feedback_dir="fb", feedback_max_mb=20), {}, tmp_path)
    assert store is not None and store.folder == tmp_path / "fb" and store.max_bytes == 20 * MB


def test_the_project_keeps_feedback_in_its_own_folder() -> None:
    repo = Path(__file__).resolve().parents[3]
    serve = load_params(repo / "params.yaml").serve
    assert serve.feedback_dir == "feedback" and serve.feedback_max_mb >= serve.max_upload_mb
    assert "/feedback" in (repo / ".gitignore").read_text().splitlines()
    assert "feedback/" in (repo / ".dvcignore").read_text().splitlines()


@pytest.mark.parametrize(("text", "message"), [
    ("serve:\n  feedback_max_mb: 5\n", "serve.feedback_max_mb must hold at least one photo"),
    ("serve:\n  feedback_dir: [a, b]\n", "serve.feedback_dir = .* must be a folder name"),
    ("serve:\n  feedback_max_mb: lots\n", "serve.feedback_max_mb = 'lots' is not a valid float"),
])
def test_wrong_feedback_params_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")


# ---- the route's checks -----------------------------------------------------------------------------------------

def face(box: Box, label: str = "sheldon") -> FacePrediction:
    return FacePrediction(box, label, label, 0.9, {label: 0.9}, 0.3, 0.5)


def test_the_reported_box_must_match_a_detected_face() -> None:
    faces = [face(Box(0, 0, 100, 100), "howard"), face(Box(300, 0, 100, 100), "raj")]
    assert matching_face(faces, Box(300, 0, 100, 100)).label == "raj"
    assert matching_face(faces, Box(310, 10, 100, 100)).label == "raj"  # IoU 0.68
    assert matching_face(faces, Box(350, 0, 100, 100)) is None  # IoU 0.33: another face, or a tampered box
    assert matching_face([], Box(0, 0, 10, 10)) is None


def form(**fields: str | bytes) -> FormData:
    return FormData([(k, UploadFile(io.BytesIO(v), filename="p.jpg", headers=Headers({}))
                      if isinstance(v, bytes) else v) for k, v in fields.items()])


CLASSES = ["howard", "leonard", "raj", "sheldon"]
GOOD = {"consent": "true", "label": "raj", "x": "96", "y": "149", "w": "290", "h": "290", "image": b"..."}


def test_a_complete_report_is_read() -> None:
    image, box, label = read_report(form(**GOOD), CLASSES)
    assert box == BOX and label == "raj" and isinstance(image, UploadFile)


@pytest.mark.parametrize(("change", "message"), [
    ({"consent": None}, "nothing was stored: the form has no consent=true"),
    ({"consent": "false"}, "no consent=true"),
    ({"label": "Raj"}, r"'Raj' is not one of howard, leonard, raj, sheldon, unknown"),
    ({"label": None}, "'label' = None is not one of"),
    ({"label": "penny"}, r"'penny' is not one of howard, leonard, raj, sheldon, unknown"),
    ({"x": None}, "box field 'x' is missing"),
    ({"w": "1.5"}, "box field 'w' is '1.5'"),
    ({"h": "0"}, "has no area"),
    ({"image": None}, "no file in the field 'image'"),
    ({"image": "text"}, "no file in the field 'image'"),
])
def test_an_incomplete_report_names_what_is_wrong(change: dict, message: str) -> None:
    fields = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(BadReport, match=message):
        read_report(form(**fields), CLASSES)
