"""The clean stage on a small raw folder built from real photos, a corrupt file and a duplicate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bbt import artifacts
from bbt.config import CleanParams, DataParams
from bbt.errors import DataError
from bbt.pipeline import clean
from bbt.pipeline.clean import (
    POOL_MIN_PHOTOS,
    Cast,
    detect_jobs,
    list_images,
    plan_jobs,
    reviewed_annotations,
    run_clean,
)
from tests.conftest import Project

pytestmark = pytest.mark.integration
# Two photos cannot give every person the faces training needs: this stage's own products are what is tested here.
CAST = Cast(("howard", "leonard", "raj", "sheldon"), 0, "")


@pytest.fixture
def small_dataset(pulled_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataParams:
    """Two real photos with their reviews, a byte-identical copy, and a file that is not an image."""
    source = pulled_project.root / "data"
    reviews = pd.read_csv(source / "annotations.csv")
    accepted = reviews[reviews.review == "accepted"].image.iloc[0]
    rejected = reviews[(reviews.review == "rejected") & ~reviews.image.isin(
        reviews[reviews.review == "accepted"].image)].image.iloc[0]
    raw = tmp_path / "data/raw"
    for name in (accepted, rejected):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "raw" / name, raw / name)
    (raw / "sheldon").mkdir(exist_ok=True)
    shutil.copy(source / "raw" / accepted, raw / "sheldon/copy of it.jpg")
    (raw / "sheldon/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    reviews[reviews.image.isin([accepted, rejected])].to_csv(tmp_path / "data/annotations.csv", index=False)
    (tmp_path / "review").mkdir()
    (tmp_path / "review/corrections.csv").write_text("image,x,y,w,h,label,review,reason\n")
    monkeypatch.chdir(tmp_path)
    return DataParams(Path("data/raw"), Path("data/annotations.csv"), Path("review/corrections.csv"))


def test_report_counts_and_products(small_dataset: DataParams) -> None:
    report = run_clean(small_dataset, CleanParams(workers=2), CAST)
    assert json.loads(artifacts.CLEAN_REPORT.read_text()) == report
    # The DVC metric: the headline totals only (`dvc metrics show` fits a terminal).
    assert json.loads(artifacts.CLEAN_METRICS.read_text()) == {
        "images": 4, "faces": report["total"]["accepted"], "strangers": report["total"]["stranger"],
        "detector_recall": report["detector_recall"]}
    assert report["total"]["images"] == 4
    assert report["total"]["unreadable"] == 1
    assert report["total"]["duplicates"] == 2
    assert report["total"]["accepted"] >= 1 and report["total"]["rejected"] >= 1
    assert report["total"]["missed_annotations"] == 0
    with np.load(artifacts.FACES) as faces:
        assert faces["crops"].shape[1:] == (128, 128, 3)
        # Every reviewed face keeps its crop; only accepted ones carry an actor's name.
        assert len(faces["labels"]) == sum(report["total"][k] for k in ("accepted", "stranger", "rejected"))
        assert (faces["status"] == "accepted").sum() == report["total"]["accepted"]
        assert set(faces["labels"][faces["status"] == "rejected"]) == {""}
    detections = pd.read_csv(artifacts.DETECTIONS)
    assert "unreadable" in set(detections.status)
    assert detections.loc[detections.status == "unreadable", "image"].str.contains("broken").all()


def test_the_crops_carry_the_second_review_label(small_dataset: DataParams) -> None:
    reviews = pd.read_csv(small_dataset.annotations)
    face = reviews[reviews.review == "accepted"].iloc[0]
    other = next(actor for actor in ("howard", "raj") if actor != face.label)
    with small_dataset.corrections.open("a") as second:
        second.write(f"{face.image},{face.x},{face.y},{face.w},{face.h},{other},accepted,it is {other}\n")
    report = run_clean(small_dataset, CleanParams(workers=1), CAST)
    assert report["second_review"] == {face.image.split("/")[0]: {"relabelled": 1}, "total": {"relabelled": 1}}
    with np.load(artifacts.FACES) as faces:
        corrected = faces["images"] == face.image
        assert list(faces["labels"][corrected]) == [other]
        assert list(faces["reviewed_in"][corrected]) == ["corrections"]


def test_a_stranger_verdict_makes_an_unknown_face_and_a_bad_one_names_its_row(small_dataset: DataParams) -> None:
    reviews = pd.read_csv(small_dataset.annotations)
    face = reviews[reviews.review == "rejected"].iloc[0]
    with small_dataset.corrections.open("a") as second:
        second.write(f"{face.image},{face.x},{face.y},{face.w},{face.h},,stranger,Penny\n")
    report = run_clean(small_dataset, CleanParams(workers=1), CAST)
    assert report["second_review"]["total"] == {"stranger": 1}
    assert report["stranger_faces"] == report["total"]["stranger"] == 1
    with np.load(artifacts.FACES) as faces:
        stranger = faces["status"] == "stranger"
        assert list(faces["labels"][stranger]) == ["unknown"] and list(faces["first_review"][stranger]) == ["rejected"]
    small_dataset.corrections.write_text("image,x,y,w,h,label,review,reason\n"
                                         f"{face.image},{face.x},{face.y},{face.w},{face.h},raj,stranger,Penny\n")
    with pytest.raises(DataError, match=r"corrections.csv:2: a stranger face must have an empty label"):
        run_clean(small_dataset, CleanParams(workers=1), CAST)


def test_one_worker_gives_the_same_result(small_dataset: DataParams) -> None:
    first = run_clean(small_dataset, CleanParams(workers=1), CAST)
    shutil.rmtree(artifacts.CLEAN_CACHE)
    assert run_clean(small_dataset, CleanParams(workers=2), CAST) == first
    # Enough photos for the process pool: the same detections as one process.
    annotations = reviewed_annotations(small_dataset)[0]
    jobs = plan_jobs(small_dataset.raw, list_images(small_dataset.raw), annotations) * 6
    assert len(jobs) >= POOL_MIN_PHOTOS
    pooled, alone = (detect_jobs(jobs, small_dataset.raw, CleanParams(workers=n)) for n in (2, 1))
    assert [d.boxes for d in pooled] == [d.boxes for d in alone]
    assert all(np.array_equal(a.crops, b.crops) for a, b in zip(pooled, alone) if a.crops is not None)


def products() -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in (artifacts.FACES, artifacts.DETECTIONS, artifacts.CLEAN_REPORT)}


def test_a_second_run_detects_nothing_and_writes_the_same_products(small_dataset: DataParams,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_clean(small_dataset, CleanParams(workers=1), CAST)
    first = products()

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("detect_job ran although every photo is in the cache")

    monkeypatch.setattr(clean, "detect_job", must_not_run)
    run_clean(small_dataset, CleanParams(workers=1), CAST)
    assert products() == first


def test_an_added_photo_is_the_only_one_detected_and_the_products_equal_a_full_run(
        small_dataset: DataParams, monkeypatch: pytest.MonkeyPatch) -> None:
    run_clean(small_dataset, CleanParams(workers=1), CAST)
    source = next(p for p in sorted(small_dataset.raw.rglob("*.jpg")) if "broken" not in p.name)
    with Image.open(source) as image:
        image.save(source.parent / "re-encoded.jpg", quality=80)
    detected: list[str] = []
    real = clean.detect_job

    def counted(job: clean.ImageJob, *args: object, **kwargs: object) -> object:
        detected.append(job.paths[0])
        return real(job, *args, **kwargs)

    monkeypatch.setattr(clean, "detect_job", counted)
    incremental = run_clean(small_dataset, CleanParams(workers=1), CAST)
    assert detected == [str((source.parent / "re-encoded.jpg").relative_to(small_dataset.raw))]
    assert incremental["total"]["images"] == 5
    after_adding = products()
    shutil.rmtree(artifacts.CLEAN_CACHE)
    assert run_clean(small_dataset, CleanParams(workers=1), CAST) == incremental
    assert products() == after_adding
    assert len(detected) == 1 + 4  # the full run detected all four distinct photos again
