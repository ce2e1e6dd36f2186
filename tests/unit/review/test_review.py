"""`bbt review` on a generated project: the queue, verdicts saved as clean validates them, undo, bad requests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bbt.config import DataParams
from bbt.pipeline.annotations import load_annotations, load_corrections
from bbt.review.app import Answers, create_app
from bbt.review.feedback import FeedbackStore
from bbt.review.queue import VERDICT_FILE
from bbt.review.verdicts import Reviewer, ReviewError
from bbt.vision.faces import Box

HEADER = "image,x,y,w,h,label,review,reason\n"
CORRECTED = 'howard/a.png,10,10,40,40,howard,accepted,"confirmed, a close-up"\n'


def photo_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """Two photos, a reviewed box each, the audit's reports and clean's detections, as the pipeline writes them."""
    for path, seed in (("howard/a.png", 1), ("raj/b.png", 2)):
        (tmp_path / "data/raw" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data/raw" / path).write_bytes(photo_bytes(seed))
    (tmp_path / "data/annotations.csv").write_text("image,x,y,w,h,label,review\n"
                                                   "howard/a.png,10,10,40,40,howard,accepted\n"
                                                   "raj/b.png,5,5,30,30,raj,accepted\n"
                                                   "raj/b.png,90,20,30,30,,rejected\n")
    (tmp_path / "review").mkdir()
    (tmp_path / "review/corrections.csv").write_text(HEADER + CORRECTED)
    (tmp_path / "artifacts/faces").mkdir(parents=True)
    (tmp_path / "artifacts/faces/detections.csv").write_text(
        "image,x,y,w,h,status,label\nhoward/a.png,10,10,40,40,accepted,howard\nhoward/a.png,100,50,30,30,unreviewed,\n"
        "raj/b.png,5,5,30,30,accepted,raj\nraj/b.png,60,60,20,20,unreviewed,\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/label_audit.csv").write_text(
        "image,x,y,w,h,label,predicted,agreement,reviewed_in\nraj/b.png,5,5,30,30,raj,howard,0.8,annotations\n"
        "howard/a.png,10,10,40,40,howard,sheldon,0.7,corrections\n")
    (tmp_path / "reports/rejected_review.csv").write_text(
        "image,x,y,w,h,nearest_actor,distance,proposal,second_review\nraj/b.png,90,20,30,30,howard,0.3,howard,"
        "not reviewed\n")
    return tmp_path


def reviewer(project: Path, store: Path | None = None) -> Reviewer:
    return Reviewer(project, DataParams(), store)


def corrections(project: Path) -> list:
    annotations = load_annotations(project / "data/annotations.csv", project / "data/raw")
    return load_corrections(project / "review/corrections.csv", annotations, project / "data/raw")


def test_the_queue_orders_sources_and_leaves_out_what_is_judged(project: Path) -> None:
    queue = reviewer(project).queue
    # The suspect already settled in corrections.csv is not asked again.
    assert [(i.source, i.image, i.box) for i in queue] == [
        ("suspect", "raj/b.png", Box(5, 5, 30, 30)),
        ("rejected", "raj/b.png", Box(90, 20, 30, 30)),
        ("unreviewed", "howard/a.png", Box(100, 50, 30, 30)),
        ("unreviewed", "raj/b.png", Box(60, 60, 20, 20)),
    ]
    assert queue[0].suggestion == "howard" and "80%" in queue[0].why


def test_faces_too_small_for_the_champion_come_first(project: Path) -> None:
    queue = Reviewer(project, DataParams(), None, min_face_width=28).queue
    assert [(i.source, i.box) for i in queue][:2] == [("cant_tell", Box(60, 60, 20, 20)),
                                                      ("suspect", Box(5, 5, 30, 30))]
    assert "20 px wide" in queue[0].why and "from 28 px" in queue[0].why
    assert queue[-1].source == "unreviewed" and queue[-1].box == Box(100, 50, 30, 30)


def test_each_verdict_is_saved_at_once_as_clean_reads_it_and_undone_exactly(project: Path) -> None:
    before = (project / "review/corrections.csv").read_bytes()
    session = reviewer(project)
    suspect, rejected, new_box = session.queue[0], session.queue[1], session.queue[2]
    session.give(suspect.key, "howard", note="the red shirt")
    session.give(rejected.key, "stranger")
    session.give(new_box.key, "unusable", image=new_box.image, box=new_box.box)
    assert session.progress() == (3, 4)
    kinds = {(c.corrected.image, c.corrected.box): (c.kind, c.corrected.review, c.corrected.label)
             for c in corrections(project)}
    assert kinds[(suspect.image, suspect.box)] == ("relabelled", "accepted", "howard")
    assert kinds[(rejected.image, rejected.box)] == ("stranger", "stranger", None)
    assert kinds[(new_box.image, new_box.box)] == ("new", "rejected", None)
    assert "note: the red shirt" in (project / "review/corrections.csv").read_text()
    # A crash now loses nothing: a new session finds the verdicts and asks only the last face.
    assert [i.key for i in reviewer(project).queue] == [session.queue[3].key]
    for _ in range(3):
        session.undo()
    assert (project / "review/corrections.csv").read_bytes() == before
    with pytest.raises(ReviewError, match="nothing to undo"):
        session.undo()


@pytest.mark.parametrize(("change", "message"), [
    ({"verdict": "penny"}, "not one of"),
    ({"key": "unreviewed:raj/b.png:1,1,1,1"}, "no face"),
    ({"image": "../../../etc/passwd"}, "outside"),
    ({"image": "/etc/passwd"}, "outside"),
    ({"image": "raj/b.png"}, "reload the page"),
    ({"box": Box(1, 2, 3, 4)}, "reload the page"),
    ({"note": "x" * 501}, "under 500"),
])
def test_a_bad_or_tampered_verdict_changes_nothing(project: Path, change: dict, message: str) -> None:
    before = (project / "review/corrections.csv").read_bytes()
    session = reviewer(project)
    item = session.queue[2]
    verdict = {"key": item.key, "verdict": "leonard", "note": "", "image": item.image, "box": item.box, **change}
    with pytest.raises(ReviewError, match=message):
        session.give(verdict["key"], verdict["verdict"], verdict["note"], verdict["image"], verdict["box"])
    assert (project / "review/corrections.csv").read_bytes() == before
    assert session.progress() == (0, 4)


def test_a_verdict_that_clean_would_refuse_is_not_written(project: Path) -> None:
    session = reviewer(project)
    (project / "data/raw/howard/a.png").unlink()  # the photo went away after the queue was built
    item = session.queue[2]
    before = (project / "review/corrections.csv").read_bytes()
    with pytest.raises(ReviewError):
        session.give(item.key, "leonard")
    assert (project / "review/corrections.csv").read_bytes() == before


def test_feedback_verdicts_bring_the_photo_into_data_and_undo_takes_it_out(project: Path) -> None:
    store = FeedbackStore(project / "feedback", 50)
    for seed, user in ((3, "leonard"), (4, "unknown"), (5, "raj")):
        store.add(photo_bytes(seed), ".png", Box(20, 20, 50, 50), "howard", 0.9, user, "7")
    session = reviewer(project, project / "feedback")
    assert [i.source for i in session.queue[:3]] == ["feedback"] * 3
    said = {i.suggestion: i for i in session.queue[:3]}  # in the store's order: by id
    first, second, third = said["leonard"], said["stranger"], said["raj"]
    assert "says it is leonard" in first.why and "model version 7" in first.why

    session.give(first.key, "leonard", image=first.image, box=first.box)
    session.give(second.key, "stranger")
    session.give(third.key, "unusable")
    copied = project / f"data/raw/leonard/feedback-{first.feedback_id}.png"
    stranger = project / f"data/raw/strangers/feedback-{second.feedback_id}.png"
    assert copied.read_bytes() == Path(first.image).read_bytes() and stranger.is_file()
    rows = {(c.corrected.image, c.corrected.review, c.corrected.label) for c in corrections(project)}
    assert (f"leonard/{copied.name}", "accepted", "leonard") in rows
    assert (f"strangers/{stranger.name}", "stranger", None) in rows
    assert not any(str(third.feedback_id) in image for image, _, _ in rows)
    assert all((Path(i.image).parent / VERDICT_FILE).is_file() for i in (first, second, third))
    assert [i.source for i in reviewer(project, project / "feedback").queue].count("feedback") == 0

    for _ in range(3):
        session.undo()
    assert not copied.exists() and not stranger.exists()
    assert not any((Path(i.image).parent / VERDICT_FILE).exists() for i in (first, second, third))
    assert len(reviewer(project, project / "feedback").queue) == 7


def test_the_app_answers_every_bad_request_with_a_json_error(project: Path) -> None:
    session = reviewer(project)
    client = TestClient(create_app(session, Answers(None)))
    assert "bbt review" in client.get("/").text
    assert client.get("/static/review.js").status_code == 200
    assert client.get("/static/../params.yaml").status_code == 404
    state = client.get("/api/queue").json()
    assert (state["done"], state["total"]) == (0, 4)
    item = client.get("/api/items/2").json()
    assert item["box"] == {"x": 100, "y": 50, "w": 30, "h": 30} and item["answer"] is None
    assert client.get("/api/items/2/crop.jpg").headers["content-type"] == "image/jpeg"
    for bad in ({"key": 1}, {"key": item["key"]}, {"key": item["key"], "verdict": "raj", "box": {"x": -1}},
                {"key": item["key"], "verdict": "raj", "extra": 1}):
        answer = client.post("/api/verdict", json=bad)
        assert answer.status_code == 400 and answer.json()["error"].startswith("invalid request")
    assert client.post("/api/verdict", content=b"\xff", headers={"content-type": "application/json"}
                       ).status_code == 400
    assert client.get("/api/items/99").status_code == 404
    assert client.post("/api/undo").status_code == 409
    given = client.post("/api/verdict", json={"key": item["key"], "verdict": "raj", "image": item["image"],
                                              "box": item["box"]})
    assert given.status_code == 200 and given.json()["done"] == 1
    assert client.post("/api/undo").json()["undone"] == item["key"]
