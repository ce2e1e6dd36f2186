"""Integration: what the real `bbt serve` answers is logged (bbt/monitoring/answers.py) and `bbt monitor` counts it."""

from __future__ import annotations

import base64
import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bbt import UNKNOWN
from bbt.monitoring.logs import in_period, period_of, read_records
from tests.conftest import Server

pytestmark = pytest.mark.integration

MODEL = "bbt-actor-classifier"


def dataset_photos(server: Server, count: int) -> list[Path]:
    """The `count` smallest JPEGs of the dataset, one folder after another (so actors and group photos mix)."""
    folders = sorted(p for p in (server.project.root / "data/raw").iterdir() if p.is_dir())
    chosen: list[Path] = []
    for folder in folders:
        chosen += sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")),
                         key=lambda p: (p.stat().st_size, p.name))[:2]
    return chosen[:count]


def test_bbt_monitor_counts_what_the_server_answered(bento_server: Server, tmp_path: Path) -> None:
    project = bento_server.project
    # The shared server answers other tests too, one after another: this test's requests are those of its window.
    since = datetime.now(UTC)
    answers, faces = [], []
    photos = dataset_photos(bento_server, 5)
    with httpx.Client(base_url=bento_server.url, timeout=60) as client:
        for photo in photos[:-1]:
            response = client.post("/classify", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert response.status_code == 200, response.text
            answers.append([(f["label"], f["confidence"]) for f in response.json()["faces"]])
            faces += [(photo, face) for face in response.json()["faces"]]
        version = response.json()["model"]["version"]
        legacy = client.post("/classify_image", data={
            "image_data": "data:image/jpeg;base64," + base64.b64encode(photos[-1].read_bytes()).decode()})
        assert legacy.status_code == 200, legacy.text
        answers.append([(f["class"], None) for f in legacy.json()])
        refused = client.post("/classify", files={"image": ("empty.jpg", b"", "image/jpeg")})
        assert refused.status_code == 400  # a refused photo was not answered: not logged
        # A kept feedback counts in the feedback rate; removed afterwards, so no other test sees it.
        assert faces, f"none of {[p.name for p in photos]} has a face the model finds"
        photo, face = faces[0]
        kept = client.post("/feedback", data={**{k: str(v) for k, v in face["box"].items()}, "consent": "true",
                                              "label": "sheldon" if face["label"] != "sheldon" else "raj"},
                           files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert kept.status_code == 201, kept.text
        shutil.rmtree(project.root / "feedback" / kept.json()["id"])
    until = datetime.now(UTC)

    # The logs hold exactly these answers, in order: faces, labels and confidences as the client got them.
    records = in_period(read_records(project.root / "monitoring"), period_of(since.isoformat(), until.isoformat(),
                                                                           7, until))
    logged = [r for r in records if r.event == "answer"]
    assert [r.labels for r in logged] == [tuple(label for label, _ in faces) for faces in answers]
    assert [r.confidences for r in logged[:-1]] == [tuple(c for _, c in faces) for faces in answers[:-1]]
    assert {(r.model_name, r.model_version) for r in records} == {(MODEL, version)}
    assert len({r.model_tag for r in records}) == 1 and records[0].model_tag.startswith(f"{MODEL}:")
    assert [r.event for r in records].count("feedback") == 1
    assert all(r.latency_ms is not None and 0 < r.latency_ms < 30_000 for r in logged)

    png = tmp_path / "monitor.png"
    result = project.run("bbt", "monitor", "--since", since.isoformat(), "--until", until.isoformat(),
                         "--png", str(png), check=False)
    assert result.returncode == 0, result.stdout + result.stderr  # a handful of faces: too few to judge
    out = " ".join(result.stdout.split())
    n_faces = sum(len(faces) for faces in answers)
    n_unknown = sum(label == UNKNOWN for faces in answers for label, _ in faces)
    assert f"photos answered │ {len(answers)} │" in out
    assert f"feedback (wrong answers reported) │ {1 / len(answers):.1%} (1 of {len(answers)})" in out
    assert f"faces │ {n_faces} │" in out
    assert f"{n_unknown / n_faces:.1%} ({n_unknown} of {n_faces})" in out
    # The reference came with the served model (register put it in its metadata), not from artifacts/.
    assert f"from {MODEL} version {version}'s metadata" in out
    assert "too few requests to judge" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
