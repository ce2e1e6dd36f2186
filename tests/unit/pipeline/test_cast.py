"""The cast is data: who trains as whom, how many faces a person needs, and the register gate with a new person."""

from __future__ import annotations

import pytest

from bbt.config import Params, validate
from bbt.errors import ConfigError, DataError
from bbt.pipeline.annotations import Annotation, Correction
from bbt.pipeline.clean import Cast, Face, ImageResult, check_faces_per_person, fewest_faces, outside_cast
from bbt.pipeline.register import people_gate
from bbt.review.queue import person_keys
from bbt.review.verdicts import without_row
from bbt.vision.faces import Box


def test_the_fewest_faces_leave_a_face_per_fold_after_the_test_split() -> None:
    assert fewest_faces(5, 5, 0.2) == 7  # 7 - ceil(1.4) = 5 training faces for 5 folds; 6 leaves 4
    assert fewest_faces(3, 2, 0.5) == 6
    assert fewest_faces(10, 5, 0.2) == 13


def test_faces_accepted_as_someone_outside_the_cast_train_as_strangers() -> None:
    penny = Annotation("leonard/a.jpg", Box(1, 2, 30, 30), "penny", "accepted")
    raj = Annotation("raj/b.jpg", Box(1, 2, 30, 30), "raj", "accepted")
    original = Annotation("leonard/a.jpg", Box(1, 2, 30, 30), None, "rejected")
    annotations, corrections, others = outside_cast([penny, raj], [Correction(original, penny, "Penny")],
                                                    ("raj", "howard"))
    assert [(a.label, a.review) for a in annotations] == [(None, "stranger"), ("raj", "accepted")]
    assert corrections[0].kind == "stranger" and others == {"penny": 1}
    kept, _, none = outside_cast([penny, raj], [], ("raj", "penny"))
    assert kept == [penny, raj] and not none


def test_too_few_faces_for_a_cast_member_stops_with_both_counts() -> None:
    faces = [Face("x.jpg", Box(0, 0, 9, 9), "accepted", name) for name in ["raj"] * 7 + ["penny"] * 3]
    with pytest.raises(DataError, match=r"'penny' has 3, 'sheldon' has 0; each person needs at least 7"):
        check_faces_per_person([ImageResult(("x.jpg",), faces=faces)], Cast(("raj", "penny", "sheldon"), 7, "folds"),
                               "review/corrections.csv")
    check_faces_per_person([ImageResult(("x.jpg",), faces=faces)], Cast(("raj",), 7, "folds"), "c.csv")


@pytest.mark.parametrize(("cast", "message"), [
    (("raj",), "at least two people"),
    (("raj", "Penny"), "'Penny' is not a name"),
    (("raj", "unknown"), "is an answer or a verdict"),
    (("raj", "raj"), "lists a name twice"),
])
def test_a_bad_cast_names_the_key(cast: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"cast .*{message}"):
        validate(Params(cast=cast), "params.yaml")


def test_review_keys_are_initials_then_digits_and_never_the_apps_own() -> None:
    assert person_keys(["howard", "leonard", "raj", "sheldon"]) == {"howard": "h", "leonard": "l", "raj": "r",
                                                                   "sheldon": "s"}
    assert person_keys(["raj", "rachel", "uma", "penny"]) == {"raj": "r", "rachel": "1", "uma": "2", "penny": "p"}


def test_a_face_judged_again_loses_its_old_row_only() -> None:
    text = ('image,x,y,w,h,label,review,reason\n'
            'a.jpg,1,2,3,4,,stranger,"Penny, over\r\ntwo lines"\n'
            'b.jpg,1,2,3,4,raj,accepted,ok\n')
    assert without_row(text, "a.jpg", Box(1, 2, 3, 4)) == ('image,x,y,w,h,label,review,reason\n'
                                                            'b.jpg,1,2,3,4,raj,accepted,ok\n')
    assert without_row(text, "c.jpg", Box(1, 2, 3, 4)) == text


def test_the_gate_with_a_new_person_allows_cv_noise_and_reports_the_new_person() -> None:
    champion = {"actor_f1": 0.99, "false_accept_rate": 0.0}
    cv = {"penny": {"recall": 0.92, "precision": 1.0, "faces": 11}}
    promote, reason = people_gate({"actor_f1": 0.985, "false_accept_rate": 0.0}, champion, "champion", "3",
                                  ["penny"], 0.01, 1 / 11, cv)
    assert promote and "penny: CV recall 0.920" in reason and "on the people both know, no worse" in reason
    worse, why = people_gate({"actor_f1": 0.95, "false_accept_rate": 0.0}, champion, "champion", "3", ["penny"],
                             0.01, 1 / 11, cv)
    assert not worse and "worse than champion version 3" in why
    leaky, _ = people_gate({"actor_f1": 0.99, "false_accept_rate": 0.2}, champion, "champion", "3", ["penny"],
                           0.01, 1 / 11, cv)
    assert not leaky
