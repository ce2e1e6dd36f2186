"""What `bbt register` says it did: one sentence, true in each case (issue 27: it said "no champion yet" after
making one)."""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from bbt.model.openset import OpenSetClassifier
from bbt.pipeline.register import faces_it_trained_on, outcome, promotion

NAME = "bbt-actor-classifier"
GOOD = {"actor_f1": 1.0, "false_accept_rate": 0.0}
LEAKY = {"actor_f1": 1.0, "false_accept_rate": 0.5}


def said(new: dict, old: dict | None, version: str, champion: str | None, registered_now: bool = True) -> str:
    promote, reason = promotion(new, old, "champion", champion)
    return outcome(NAME, version, "champion", registered_now, champion, promote, reason)


def test_the_first_version_becomes_the_champion_and_says_there_was_none() -> None:
    assert said(GOOD, None, "1", None) == f"{NAME} registered as version 1, now @champion (there was none)"


def test_a_no_worse_version_takes_the_alias_and_says_from_whom() -> None:
    message = said(GOOD, GOOD, "2", "1")
    assert message.startswith(f"{NAME} registered as version 2, now @champion: no worse than champion version 1 ")
    assert message.count("@champion") == 1


def test_a_worse_version_is_registered_and_the_alias_stays() -> None:
    message = said(LEAKY, GOOD, "2", "1")
    assert message.startswith(f"{NAME} registered as version 2; @champion stays version 1: worse than champion "
                              "version 1 on today's test split")
    assert "strangers given a name 0.5000 vs 0.0000" in message


def test_a_version_already_registered_says_so() -> None:
    assert said(GOOD, GOOD, "3", "1", registered_now=False).startswith(
        f"{NAME} already in the registry as version 3, now @champion")
    assert said(LEAKY, GOOD, "3", "1", registered_now=False).startswith(
        f"{NAME} already in the registry as version 3; @champion stays version 1")


def test_the_champion_itself_is_said_to_be_the_champion() -> None:
    reason = "version 1 (this model) is already @champion"
    assert outcome(NAME, "1", "champion", False, "1", False, reason) == f"{NAME} {reason}"


def test_the_gate_knows_which_test_faces_a_champion_trained_on() -> None:
    """A champion from another split holds some of today's test faces in its gallery: those are found, so the
    gate does not judge it on its own training faces; a model without a gallery trained on none we can tell."""
    rng = np.random.default_rng(0)
    faces = rng.normal(size=(10, 8))
    identity = FunctionTransformer()
    champion = OpenSetClassifier(Pipeline([("features", identity)]), identity, "nearest_face", 0.5, faces[:6],
                                 np.array(["howard"] * 6), 0.05)
    today = np.concatenate([faces[4:], faces[:2] + 0.01])
    assert list(faces_it_trained_on(champion, today)) == [True, True, False, False, False, False, False, False]
    assert not faces_it_trained_on(object(), today).any()
