"""Grouping the waiting faces (bbt/review/clusters.py) on generated descriptors, and group verdicts and their undo
on a generated project (bbt/review/verdicts.py, the app's /api/groups and /api/group-verdict)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bbt import UNKNOWN
from bbt.pipeline.annotations import load_annotations, load_corrections
from bbt.review.app import Answers, create_app
from bbt.review.clusters import NOT_ONE, SOMEONE_NEW, STRANGER, ClusterSettings, Proposal, group_faces
from bbt.review.groups import QueueGroup
from bbt.review.verdicts import ReviewError
from tests.unit.review.test_review import OWN, PORT, review_project, reviewer

ACTORS = ("howard", "raj")
THRESHOLD = 0.5
SETTINGS = ClusterSettings(min_cluster_size=3, min_samples=2, group_size=48, outlier_distance=0.6)


def blob(centre: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n descriptors within 0.1 of centre."""
    return centre + np.random.default_rng(seed).normal(0, 0.02, (n, len(centre)))


def people_space() -> dict[str, np.ndarray]:
    """Four people, 2 apart in a 16-d space: two actors, a reviewed stranger, and someone nobody reviewed."""
    eye = np.eye(16) * 2 / np.sqrt(2)
    return {"howard": eye[0], "raj": eye[1], UNKNOWN: eye[2], "new": eye[3]}


def anchors() -> tuple[np.ndarray, np.ndarray, list[str]]:
    space = people_space()
    X = np.vstack([blob(space[p], 4, seed) for seed, p in enumerate(("howard", "raj", UNKNOWN))])
    labels = np.array(["howard"] * 4 + ["raj"] * 4 + [UNKNOWN] * 4)
    return X, labels, [f"anchor{n}.jpg" for n in range(len(X))]


def test_each_person_is_one_group_with_its_proposal_bigger_groups_first() -> None:
    space = people_space()
    sizes = {"howard": 9, "raj": 6, UNKNOWN: 5, "new": 7}
    waiting = np.vstack([blob(space[p], n, 10 + i) for i, (p, n) in enumerate(sizes.items())])
    truth = [p for p, n in sizes.items() for _ in range(n)]
    images = [f"photo{n}.jpg" for n in range(len(waiting))]
    groups = group_faces(waiting, images, *anchors(), ACTORS, THRESHOLD, SETTINGS)
    assert [len(g.members) for g in groups] == [9, 7, 6, 5]
    assert [{truth[m] for m in g.members} for g in groups] == [{"howard"}, {"new"}, {"raj"}, {UNKNOWN}]
    assert [(g.proposal.verdict, g.proposal.says) for g in groups] == [
        ("howard", "howard"), (STRANGER, SOMEONE_NEW), ("raj", "raj"), (STRANGER, NOT_ONE)]
    assert all(g.kind == "cluster" and g.agreement == 1 and not g.outliers for g in groups)
    assert groups[0].proposal.distance < THRESHOLD < groups[1].proposal.distance


def test_two_faces_of_one_photo_share_a_cluster_only_in_a_collage() -> None:
    space = people_space()
    waiting = blob(space["howard"], 8, 20)
    images = [f"photo{n}.jpg" for n in range(6)] + ["group.jpg", "group.jpg"]
    groups = group_faces(waiting, images, *anchors(), ACTORS, THRESHOLD, SETTINGS)
    together = [g for g in groups if 6 in g.members or 7 in g.members]
    assert all(not {6, 7} <= set(g.members) for g in groups)
    assert len(together) == 2 and {g.kind for g in together} == {"cluster", "leftovers"}
    collage = ClusterSettings(**{**SETTINGS.__dict__, "collages": frozenset({"group.jpg"})})
    (group,) = group_faces(waiting, images, *anchors(), ACTORS, THRESHOLD, collage)
    assert sorted(group.members) == list(range(8))


def test_a_face_never_shares_a_cluster_with_a_reviewed_face_of_its_photo() -> None:
    space = people_space()
    waiting = blob(space["howard"], 6, 30)
    X, labels, images = anchors()
    images[0] = "photo0.jpg"  # a reviewed Howard in the same photo as waiting face 0: face 0 is someone else
    groups = group_faces(waiting, [f"photo{n}.jpg" for n in range(6)], X, labels, images, ACTORS, THRESHOLD,
                         SETTINGS)
    (alone,) = [g for g in groups if 0 in g.members]
    assert alone.kind == "leftovers" and alone.members == (0,)


def test_faces_no_cluster_takes_are_grouped_by_their_own_proposal_at_most_group_size() -> None:
    space = people_space()
    rng = np.random.default_rng(40)
    lone = np.vstack([space["new"] + rng.normal(0, 0.5, 16) * (1 + n) for n in range(5)])
    settings = ClusterSettings(**{**SETTINGS.__dict__, "group_size": 2})
    groups = group_faces(lone, [f"p{n}.jpg" for n in range(5)], *anchors(), ACTORS, THRESHOLD, settings)
    assert sorted(m for g in groups for m in g.members) == list(range(5))
    assert all(g.kind == "leftovers" and len(g.members) <= 2 for g in groups)


def grouped(project: Path):
    """A review session whose two unreviewed faces are one group proposed as Raj."""
    session = reviewer(project)
    keys = tuple(item.key for item in session.queue if item.source == "unreviewed")
    session.groups = {"g1": QueueGroup("g1", "cluster", keys, Proposal("raj", "raj", 0.31, 0.54), 1.0, ())}
    return session, keys


def test_a_group_verdict_writes_a_row_per_face_marked_as_such_and_undo_takes_all_back(tmp_path: Path) -> None:
    project = review_project(tmp_path)
    path = project / "review/corrections.csv"
    before = path.read_bytes()
    session, keys = grouped(project)
    single = session.queue[0]
    session.give(single.key, "howard")
    given = session.give_group("g1", list(keys), "raj", note="same shirt")
    assert len(given.items) == 2 and session.progress() == (3, 4)
    annotations = load_annotations(project / "data/annotations.csv", project / "data/raw")
    rows = {(c.corrected.image, c.corrected.box): c for c in load_corrections(path, annotations, project / "data/raw")}
    for key in keys:
        item = session.by_key[key]
        row = rows[(item.image, item.box)]
        assert (row.kind, row.corrected.label, row.corrected.review) == ("new", "raj", "accepted")
        assert row.reason.startswith("bbt review, group verdict g1 (2 of its 2 faces; proposed: raj at distance 0.31")
        assert row.reason.endswith("; note: same shirt")
    assert reviewer(project).queue == [session.queue[1]]  # a new session asks only what is left
    undone = session.undo()
    assert undone.group == "g1" and session.progress() == (1, 4)
    session.undo()
    assert path.read_bytes() == before


@pytest.mark.parametrize(("group", "keys", "verdict", "message"), [
    ("g9", None, "raj", "no group 'g9'"),
    ("g1", [], "raj", "no face is selected"),
    ("g1", ["suspect:raj/b.png:5,5,30,30"], "raj", "is not a face of group g1"),
    ("g1", None, "no one", "is not a name"),
])
def test_a_bad_group_verdict_changes_nothing(tmp_path: Path, group: str, keys: list[str] | None, verdict: str,
                                             message: str) -> None:
    project = review_project(tmp_path)
    before = (project / "review/corrections.csv").read_bytes()
    session, members = grouped(project)
    with pytest.raises(ReviewError, match=re.escape(message)):
        session.give_group(group, list(members) if keys is None else keys, verdict)
    assert (project / "review/corrections.csv").read_bytes() == before and not session.given


def test_the_page_lists_groups_and_takes_a_group_verdict_only_with_its_token(tmp_path: Path) -> None:
    project = review_project(tmp_path)
    session, keys = grouped(project)
    client = TestClient(create_app(session, Answers(None), PORT), base_url=OWN)
    token = re.search(r'<meta name="bbt-token" content="([^"]+)">', client.get("/").text).group(1)
    listed = client.get("/api/groups").json()
    assert listed["groups"][0]["keys"] == list(keys) and listed["groups"][0]["says"] == "raj"
    verdict = {"group": "g1", "keys": list(keys), "verdict": "raj"}
    refused = client.post("/api/group-verdict", json=verdict, headers={"Origin": "http://evil.example",
                                                                       "X-BBT-Token": token})
    assert refused.status_code == 403 and not session.given
    own = {"Origin": OWN, "X-BBT-Token": token}
    assert client.post("/api/group-verdict", json={**verdict, "verdict": "unknown"}, headers=own).status_code == 400
    assert client.post("/api/group-verdict", json=verdict, headers=own).json()["done"] == 2
    assert client.get("/api/groups").json()["groups"][0]["pending"] == []
    undone = client.post("/api/undo", headers=own).json()
    assert (undone["undone_group"], undone["undone_faces"], undone["done"]) == ("g1", 2, 0)


def test_without_the_pipelines_products_the_queue_waits_one_at_a_time_and_says_why(tmp_path: Path) -> None:
    from bbt.config import Params
    from bbt.review.app import add_groups

    project = review_project(tmp_path)
    session = reviewer(project)
    problem = add_groups(session, project, Params(), Answers(None))
    assert problem.endswith("artifacts/model/model.json not found: run `dvc repro search` (the clusters' proposals "
                            "use its open-set threshold)") and session.groups == {}


def test_among_groups_of_one_size_the_less_sure_proposal_comes_first() -> None:
    from bbt.review.clusters import Group

    def group(members: tuple[int, ...], distance: float, agreement: float) -> Group:
        return Group("cluster", members, Proposal("raj", "raj", distance, THRESHOLD), agreement, ())

    sure, near_threshold, disputed, bigger = (group((0, 1), 0.1, 1.0), group((2, 3), 0.45, 1.0),
                                              group((4, 5), 0.1, 0.5), group((6, 7, 8), 0.1, 1.0))
    assert sorted([sure, near_threshold, disputed, bigger], key=Group.order) == [bigger, disputed, near_threshold,
                                                                                 sure]


def test_leftovers_proposed_as_one_actor_never_hold_two_faces_of_one_photo() -> None:
    space = people_space()
    rng = np.random.default_rng(50)
    # Faces near Howard's anchors but too spread out for a cluster, two pairs of them from one photo each.
    lone = np.vstack([space["howard"] + rng.normal(0, 0.04, 16) for _ in range(4)])
    images = ["pair1.jpg", "pair1.jpg", "pair2.jpg", "pair2.jpg"]
    settings = ClusterSettings(**{**SETTINGS.__dict__, "min_cluster_size": 10})
    groups = group_faces(lone, images, *anchors(), ACTORS, THRESHOLD, settings)
    assert [(g.kind, g.proposal.says, len(g.members)) for g in groups] == [("leftovers", "howard", 2)] * 2
    assert all(len({images[m] for m in g.members}) == 2 for g in groups)
    collage = ClusterSettings(**{**settings.__dict__, "collages": frozenset({"pair1.jpg", "pair2.jpg"})})
    (group,) = group_faces(lone, images, *anchors(), ACTORS, THRESHOLD, collage)
    assert sorted(group.members) == [0, 1, 2, 3]
