"""`bbt review` on a generated project: the queue, verdicts saved as clean validates them, undo, bad requests."""

from __future__ import annotations

import re
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
    return review_project(tmp_path)


def review_project(tmp_path: Path) -> Path:
    """Two photos, a reviewed box each, the audit's reports and clean's detections, as the pipeline writes them:
    four faces wait for a verdict."""
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


def test_faces_the_champion_cannot_tell_come_first_with_its_reason(project: Path) -> None:
    doubts = {("howard/a.png", Box(100, 50, 30, 30)): "distance 0.560: between 0.538 and 0.591, where known people "
              "and strangers overlap (learned by cross-validation)"}
    queue = Reviewer(project, DataParams(), None, min_face_width=28, doubts=doubts).queue
    assert [(i.source, i.box) for i in queue][:3] == [("cant_tell", Box(100, 50, 30, 30)),
                                                      ("cant_tell", Box(60, 60, 20, 20)),
                                                      ("suspect", Box(5, 5, 30, 30))]
    assert queue[0].why.endswith("the model answers \"can't tell\" for it: " + next(iter(doubts.values())))
    assert all(item.source != "unreviewed" for item in queue)


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
    ({"verdict": "Penny!"}, "is not a name"),
    ({"key": "unreviewed:raj/b.png:1,1,1,1"}, "no face"),
    ({"image": "../../../etc/passwd"}, "outside"),
    ({"image": "/etc/passwd"}, "outside"),
    ({"image": "raj/b.png"}, "reload the page"),
    ({"box": Box(1, 2, 3, 4)}, "reload the page"),
    ({"note": "x" * 501}, "under 500"),
    ({"note": "a\x00b"}, "control character.* U\\+0000"),
    ({"note": "red\x1b[31m shirt\x7f"}, "U\\+001B, U\\+007F: write it as plain text"),
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


def test_a_note_keeps_its_line_ends_through_the_next_save_and_load(project: Path) -> None:
    session = reviewer(project)
    first, second = session.queue[0], session.queue[2]
    note = "the red shirt\r\nsecond line\rthird\nfourth"
    session.give(first.key, "howard", note=note)
    saved = (project / "review/corrections.csv").read_bytes()
    assert note.encode() in saved
    session.give(second.key, "unusable")  # the next save rewrites the file with the first note in it
    assert (project / "review/corrections.csv").read_bytes().startswith(saved)
    [reason] = [c.reason for c in corrections(project) if c.corrected.box == first.box]
    assert reason.endswith(f"; note: {note}")
    session.undo()
    assert (project / "review/corrections.csv").read_bytes() == saved


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


PORT = 8501
OWN = f"http://127.0.0.1:{PORT}"


def review_page(project: Path) -> tuple[TestClient, dict[str, str]]:
    """The app as the browser sees it at 127.0.0.1:PORT, and the headers its page sends with a write."""
    client = TestClient(create_app(reviewer(project), Answers(None), PORT), base_url=OWN)
    page = client.get("/")
    token = re.search(r'<meta name="bbt-token" content="([^"]+)">', page.text)
    assert page.status_code == 200 and token is not None
    return client, {"Origin": OWN, "X-BBT-Token": token.group(1)}


def test_the_app_answers_every_bad_request_with_a_json_error(project: Path) -> None:
    client, own = review_page(project)
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
        answer = client.post("/api/verdict", json=bad, headers=own)
        assert answer.status_code == 400 and answer.json()["error"].startswith("invalid request")
    assert client.post("/api/verdict", content=b"\xff", headers={**own, "content-type": "application/json"}
                       ).status_code == 400
    assert client.get("/api/items/99").status_code == 404
    assert client.post("/api/undo", headers=own).status_code == 409
    note = {"key": item["key"], "verdict": "raj", "note": "a\x00b"}
    assert client.post("/api/verdict", json=note, headers=own).json()["error"].startswith(
        "the note holds control character(s) U+0000")
    given = client.post("/api/verdict", json={"key": item["key"], "verdict": "raj", "image": item["image"],
                                              "box": item["box"]}, headers=own)
    assert given.status_code == 200 and given.json()["done"] == 1
    assert client.post("/api/undo", headers=own).json()["undone"] == item["key"]


def test_a_write_from_another_site_or_without_this_runs_token_is_refused(project: Path) -> None:
    client, own = review_page(project)
    item = client.get("/api/items/2").json()
    verdict = {"key": item["key"], "verdict": "raj"}
    assert client.post("/api/verdict", json=verdict, headers=own).status_code == 200
    before = (project / "review/corrections.csv").read_bytes()
    other_run, _ = review_page(project)  # another run of the app makes another token
    other_token = other_run.get("/").text.split('name="bbt-token" content="')[1].split('"')[0]
    assert other_token != own["X-BBT-Token"]
    form = {"content-type": "application/x-www-form-urlencoded"}
    for headers, why in (
        ({**form, "Origin": "http://evil.example"}, "comes from http://evil.example"),  # a cross-site form
        ({**own, "Origin": "http://evil.example"}, "comes from http://evil.example"),
        ({**own, "Origin": "null"}, "comes from null"),  # a sandboxed frame, a data: URL
        ({"X-BBT-Token": own["X-BBT-Token"]}, "names no Origin"),
        ({"X-BBT-Token": own["X-BBT-Token"], "Referer": "http://evil.example/page"}, "evil.example"),
        ({"Origin": OWN}, "lacks this run's review token"),
        ({"Origin": OWN, "X-BBT-Token": other_token}, "lacks this run's review token"),
        ({"Origin": f"http://127.0.0.1:{PORT + 1}", "X-BBT-Token": own["X-BBT-Token"]}, "not from the review page"),
    ):
        for path in ("/api/undo", "/api/verdict"):
            answer = client.post(path, content=b"key=x&verdict=raj", headers=headers)
            assert answer.status_code == 403 and why in answer.json()["error"], (headers, answer.text)
            assert "changed nothing" in answer.json()["error"]
    assert client.delete("/api/verdict", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.put("/api/undo", headers={"Origin": OWN}).status_code == 403
    assert (project / "review/corrections.csv").read_bytes() == before
    assert client.get("/api/queue").json()["done"] == 1
    # The page's own write: same origin by Origin, or by Referer when a browser sends no Origin.
    referer = {"Referer": f"{OWN}/", "X-BBT-Token": own["X-BBT-Token"]}
    assert client.post("/api/undo", headers=referer).json()["undone"] == item["key"]


@pytest.mark.parametrize("host", ["evil.example:8501", "127.0.0.1.evil.example:8501", "127.0.0.1:8502",
                                  "localhost", "10.0.0.7:8501", ""])
def test_a_request_for_another_host_is_refused(project: Path, host: str) -> None:
    client, own = review_page(project)
    for answer in (client.get("/", headers={"Host": host}), client.get("/api/queue", headers={"Host": host}),
                   client.post("/api/undo", headers={**own, "Host": host, "Origin": f"http://{host}"})):
        assert answer.status_code == 421 and f"not at Host {host!r}" in answer.json()["error"], answer.text
        assert "bbt-token" not in answer.text


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LocalHost:{PORT}"])
def test_the_apps_own_loopback_names_are_served(project: Path, host: str) -> None:
    client, own = review_page(project)
    answer = client.get("/api/queue", headers={"Host": host})
    assert answer.status_code == 200 and answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    undo = client.post("/api/undo", headers={**own, "Host": host, "Origin": f"http://{host}"})
    assert undo.status_code == 409 and "nothing to undo" in undo.json()["error"]
