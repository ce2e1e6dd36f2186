"""The faces waiting for a human verdict, as one queue: production feedback, the audit's suspects, rejected boxes
the audit proposes to relabel, and detections nobody reviewed. `bbt review` shows them one by one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bbt import UNKNOWN, artifacts
from bbt.pipeline.annotations import Correction
from bbt.vision.faces import Box

# The order a reviewer meets them in: reviewed faces the reviewer asked to see again (`bbt review --find`) first,
# then faces the model cannot judge (too small, blurred or in its band of doubt: it answers "can't tell"), then
# what users said the served model got wrong, then what the data itself disputes, then what was never looked at.
SOURCES = ("revisit", "cant_tell", "feedback", "suspect", "rejected", "unreviewed")


@dataclass(frozen=True)
class Item:
    """One face to judge. `image` is a path under data/raw, or for feedback the photo in the feedback store."""

    key: str  # stable across restarts: "<source>:<image>:<x>,<y>,<w>,<h>" or "feedback:<id>"
    source: str  # one of SOURCES
    image: str
    box: Box
    why: str  # shown to the reviewer: why this face is in the queue
    current: str  # what the data says today: "howard (accepted)", "rejected", "unreviewed", ...
    suggestion: str = ""  # an actor or "stranger" the audit or the user proposes, if any
    feedback_id: str = ""


def _box(row: object) -> Box:
    return Box(int(row.x), int(row.y), int(row.w), int(row.h))  # type: ignore[attr-defined]


def _read(path: Path) -> pd.DataFrame:
    """A report the pipeline wrote, or an empty table when that stage has not run (the queue is then shorter)."""
    return pd.read_csv(path, dtype={"image": str}, keep_default_na=False) if path.is_file() else pd.DataFrame()


def suspects(root: Path) -> list[Item]:
    """Accepted faces the audit's out-of-fold predictions disagree with, that no second review has settled."""
    items = []
    for row in _read(root / artifacts.AUDIT_CSV).itertuples(index=False):
        if row.reviewed_in == "corrections":
            continue
        box = _box(row)
        agreement = float(row.agreement)
        items.append(Item(f"suspect:{row.image}:{box.x},{box.y},{box.w},{box.h}", "suspect", row.image, box,
                          f"the audit: the other faces say {row.predicted} ({agreement:.0%} of its out-of-fold "
                          f"answers), the review says {row.label}", f"{row.label} (accepted)", str(row.predicted)))
    return items


def rejected_proposals(root: Path) -> list[Item]:
    """Boxes the first review rejected (often one of the other three actors in a group photo) that no second
    review has settled, with the audit's proposal."""
    items = []
    for row in _read(root / artifacts.REJECTED_CSV).itertuples(index=False):
        if row.second_review != "not reviewed":
            continue
        box = _box(row)
        items.append(Item(f"rejected:{row.image}:{box.x},{box.y},{box.w},{box.h}", "rejected", row.image, box,
                          f"rejected by the first review (not this folder's actor); nearest actor "
                          f"{row.nearest_actor} at distance {float(row.distance):.2f}, the audit proposes "
                          f"{row.proposal}", "rejected", str(row.proposal)))
    return items


def unreviewed(root: Path, min_face_width: int = 0, doubts: Mapping[tuple[str, Box], str] | None = None,
               ) -> list[Item]:
    """Faces the detector found that no review covers; those the champion answers "can't tell" (`doubts`: why,
    per image and box; bbt.review.doubts) or narrower than it judges (`min_face_width`) come as "cant_tell"."""
    doubts = doubts or {}
    table = _read(root / artifacts.DETECTIONS)
    if table.empty:
        return []
    items = []
    for row in table[table.status == "unreviewed"].itertuples(index=False):
        box = _box(row)
        where = f"found by the detector in {row.image.split('/', 1)[0]}'s folder; nobody has reviewed it"
        if (row.image, box) in doubts:
            items.append(Item(f"unreviewed:{row.image}:{box.x},{box.y},{box.w},{box.h}", "cant_tell", row.image,
                              box, f"{where}; the model answers \"can't tell\" for it: {doubts[row.image, box]}",
                              "unreviewed"))
        elif box.w < min_face_width:
            items.append(Item(f"unreviewed:{row.image}:{box.x},{box.y},{box.w},{box.h}", "cant_tell", row.image,
                              box, f"{where}; the model answers \"can't tell\" for it: {box.w} px wide, it judges "
                              f"faces from {min_face_width} px", "unreviewed"))
        else:
            items.append(Item(f"unreviewed:{row.image}:{box.x},{box.y},{box.w},{box.h}", "unreviewed", row.image,
                              box, where, "unreviewed"))
    return items


def feedback_items(store: Path | None) -> list[Item]:
    """What users of the served page said it got wrong, not yet judged here (no verdict.json)."""
    if store is None or not store.is_dir():
        return []
    from bbt.review.feedback import FeedbackStore

    items = []
    for fb in FeedbackStore(store, max_mb=0).items():  # read only: the bound is the server's
        if (fb.folder / VERDICT_FILE).exists():
            continue
        said = "not one of the four" if fb.user_label == UNKNOWN else fb.user_label
        model = "not one of the four" if fb.model_label == UNKNOWN else fb.model_label
        items.append(Item(f"feedback:{fb.id}", "feedback", str(fb.photo), fb.box,
                          f"a user of the served page (model version {fb.model_version}, {fb.created}) says it is "
                          f"{said}; the model said {model} ({fb.model_confidence:.0%})", "not in the data",
                          "stranger" if fb.user_label == UNKNOWN else fb.user_label, fb.id))
    return items


VERDICT_FILE = "verdict.json"


def revisits(corrections: list[Correction], find: str) -> list[Item]:
    """The faces review/corrections.csv already judges whose reason holds `find` (any case): to judge again, e.g.
    to name a person the second review recorded as a stranger (`bbt review --find "Penny"`)."""
    if not find.strip():
        return []
    items = []
    for c in corrections:
        if find.strip().casefold() in c.reason.casefold():
            a = c.corrected
            items.append(Item(f"revisit:{a.image}:{a.box.x},{a.box.y},{a.box.w},{a.box.h}", "revisit", a.image, a.box,
                              f"reviewed before, found by --find {find.strip()!r}: {c.reason}",
                              f"{a.label} ({a.review})" if a.label else a.review))
    return items


def build_queue(root: Path, corrections: list[Correction], feedback_store: Path | None,
                min_face_width: int = 0, find: str = "",
                doubts: Mapping[tuple[str, Box], str] | None = None) -> list[Item]:
    """Every face waiting for a verdict, in SOURCES order, each face once (its first reason), none that
    review/corrections.csv already judges but those `find` asks for again (`revisits`). `min_face_width` and
    `doubts`: the champion's (unreviewed faces it cannot tell come first, as "cant_tell"); 0 and None when no
    model is loaded."""
    judged = {(c.corrected.image, c.corrected.box) for c in corrections}
    queue: list[Item] = [*revisits(corrections, find)]
    seen: set[tuple[str, Box]] = {(item.image, item.box) for item in queue}
    waiting = unreviewed(root, min_face_width, doubts)
    for item in [*sorted((i for i in waiting if i.source == "cant_tell"), key=_order),
                 *feedback_items(feedback_store), *sorted(suspects(root), key=_order),
                 *sorted(rejected_proposals(root), key=_order),
                 *sorted((i for i in waiting if i.source == "unreviewed"), key=_order)]:
        face = (item.image, item.box)
        if face in judged or face in seen:
            continue
        seen.add(face)
        queue.append(item)
    return queue


def _order(item: Item) -> tuple[str, int, int, int, int]:
    return item.image, item.box.x, item.box.y, item.box.w, item.box.h


# What a reviewer may answer besides a person's name, and the review each becomes in review/corrections.csv; a
# name becomes (accepted, name).
OTHER_VERDICTS = {"stranger": ("stranger", ""), "unusable": ("rejected", "")}
# The page's keys that are not a person's: not one of the cast, unusable, undo, note, groups.
TAKEN_KEYS = ("u", "x", "z", "n", "g")


def person_keys(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A key per person, in the names' order: the name's initial when it is free, else the next free digit 1-9
    (a person with none left is named by typing)."""
    keys: dict[str, str] = {}
    taken = set(TAKEN_KEYS)
    for name in names:
        key = name[0] if name[0] not in taken else next((d for d in "123456789" if d not in taken), "")
        if key:
            keys[name] = key
            taken.add(key)
    return keys
