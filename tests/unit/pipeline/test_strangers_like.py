"""A person's faces left reviewed as `stranger` when the person is enrolled: the search names them (issue 25)."""

from __future__ import annotations

import numpy as np

from bbt import UNKNOWN
from bbt.pipeline.register import people_gate
from bbt.pipeline.search import strangers_like

CAST = ("sheldon", "raj", "penny", "howard", "leonard")  # not sorted: the classes are


def faces(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    return centre + rng.normal(0, 0.04, size=(n, len(centre)))


def test_a_persons_faces_reviewed_as_strangers_are_named_and_real_strangers_are_not() -> None:
    rng = np.random.default_rng(0)
    centres = {name: rng.normal(0, 1, 16) for name in (*CAST, "stranger")}
    people = [faces(rng, centres[name], 12) for name in CAST]
    E = np.concatenate([*people,
                        people[CAST.index("penny")][:3] + rng.normal(0, 0.01, (3, 16)),  # hers, reviewed as strangers
                        rng.normal(0, 1, (20, 16))])  # strangers: anyone else
    y = np.array([*(name for name in CAST for _ in range(12)), *[UNKNOWN] * 23], dtype=object)

    found = strangers_like(y, E)

    assert sorted(found) == sorted(CAST)
    assert list(found["penny"]) == [60, 61, 62]
    assert all(len(found[name]) == 0 for name in CAST if name != "penny")


def test_without_strangers_nothing_is_named() -> None:
    rng = np.random.default_rng(1)
    y = np.array(["raj"] * 5 + ["penny"] * 5, dtype=object)
    assert all(len(v) == 0 for v in strangers_like(y, rng.normal(0, 1, (10, 8))).values())


def test_the_gate_says_how_many_stranger_faces_look_like_the_new_person() -> None:
    champion = {"actor_f1": 1.0, "false_accept_rate": 0.0}
    people = {"penny": {"recall": 0.45, "precision": 0.83, "faces": 11, "strangers_as_close": 4}}
    _, reason = people_gate({"actor_f1": 0.85, "false_accept_rate": 0.0}, champion, "champion", "1", ["penny"],
                            0.05, 0.1, people)
    assert "4 stranger face(s) as close as theirs" in reason
