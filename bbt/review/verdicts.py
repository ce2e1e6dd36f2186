"""A person's verdicts on the review queue, written to review/corrections.csv as clean reads them.

Each verdict is saved when it is given (the file is replaced atomically, after the new content passed the same
validation `clean` applies), so a crash loses nothing; the last verdicts of a session can be undone in order.
A verdict on a feedback photo first copies the photo under data/raw/<actor>/ (or data/raw/strangers/), so
`dvc add data && dvc repro` trains on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bbt.config import DataParams, check_person_name
from bbt.errors import DataError
from bbt.pipeline.annotations import (
    CORRECTION_COLUMNS,
    Annotation,
    load_annotations,
    load_corrections,
    record_lines,
)
from bbt.review.queue import OTHER_VERDICTS, VERDICT_FILE, Item, build_queue
from bbt.vision.faces import Box

if TYPE_CHECKING:
    from bbt.review.groups import QueueGroup

STRANGERS_FOLDER = "strangers"  # data/raw/<this>/: feedback photos of people who are none of the four
MAX_NOTE = 500
# Line breaks are text a note may hold (kept as given, \r included); any other control character is not.
NOTE_LINE_BREAKS = "\t\r\n"


class ReviewError(DataError):
    """A verdict that cannot be taken (unknown face, tampered request, a label that does not exist): nothing
    was changed."""


@dataclass(frozen=True)
class Given:
    """A saved verdict and what it changed, so it can be undone: on one face, or on a group's faces at once."""

    items: tuple[Item, ...]
    verdict: str
    before: str  # review/corrections.csv's text before the verdict
    after: str  # ... and after it
    copied: Path | None  # the feedback photo copied under data/raw
    verdict_file: Path | None  # the feedback item's verdict.json
    group: str = ""  # the group's id, for a group verdict

    @property
    def item(self) -> Item:
        return self.items[0]


def verdict_review(verdict: str) -> tuple[str, str]:
    """The (review, label) a verdict becomes in review/corrections.csv: a person's name, whether in the cast or
    new, is (accepted, name); ReviewError for anything else."""
    if verdict in OTHER_VERDICTS:
        return OTHER_VERDICTS[verdict]
    why = check_person_name(verdict)
    if why:
        raise ReviewError(f"verdict {why}; or give one of {sorted(OTHER_VERDICTS)}")
    return "accepted", verdict


def without_row(text: str, image: str, box: Box) -> str:
    """The corrections CSV text without its row for (image, box): a face judged again gets one row, its new one."""
    starts = record_lines(text)  # as clean counts them: blank lines are no rows
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if "".join(row).strip(" \t\r\n")][1:]
    lines = list(io.StringIO(text, newline=""))
    ends = [*starts[1:], len(lines) + 1]
    for start, end, row in zip(starts, ends, rows):
        if row[:5] == [image, str(box.x), str(box.y), str(box.w), str(box.h)]:
            return "".join(lines[:start - 1] + lines[end - 1:])
    return text


class Reviewer:
    """The queue of one `bbt review` session and the verdicts given in it (thread-safe)."""

    def __init__(self, root: Path, data: DataParams, feedback_store: Path | None, min_face_width: int = 0,
                 cast: tuple[str, ...] = (), find: str = "",
                 doubts: Mapping[tuple[str, Box], str] | None = None) -> None:
        self.root = root
        self.raw = root / data.raw
        self.corrections_path = root / data.corrections
        self.cast = cast  # params.yaml's, when the session started
        self.annotations: list[Annotation] = load_annotations(root / data.annotations, self.raw)
        corrections = load_corrections(self.corrections_path, self.annotations, self.raw)
        self.feedback_store = feedback_store
        self.queue = build_queue(root, corrections, feedback_store, min_face_width, find, doubts)
        self.by_key = {item.key: item for item in self.queue}
        self.given: list[Given] = []
        self.groups: dict[str, QueueGroup] = {}  # set by the app when it groups the queue
        self._lock = threading.Lock()

    @property
    def done(self) -> set[str]:
        return {item.key for g in self.given for item in g.items}

    def verdicts(self) -> dict[str, str]:
        """The verdict given in this session per face key."""
        return {item.key: g.verdict for g in self.given for item in g.items}

    def new_names(self) -> list[str]:
        """The people review/corrections.csv accepts faces of who are not in the cast (yet): to enrol."""
        rows = csv.DictReader(io.StringIO(read_exactly(self.corrections_path), newline=""))
        return sorted({r["label"] for r in rows if r.get("review") == "accepted" and r.get("label")} - set(self.cast))

    def people(self) -> list[str]:
        """The names a verdict key stands for: the cast, then the new names given so far."""
        return [*self.cast, *self.new_names()]

    def progress(self) -> tuple[int, int]:
        """(faces judged in this session, faces in the queue when it started)."""
        return len(self.done), len(self.queue)

    def give(self, key: str, verdict: str, note: str = "", image: str | None = None,
             box: Box | None = None) -> Given:
        """Judge one queued face. `image` and `box`, when sent, must be the queued face's: a request naming
        another photo or box is refused (ReviewError) and changes nothing."""
        item = self.check(key, verdict, note, image, box)
        with self._lock:
            if key in self.done:
                raise ReviewError(f"{key} already has a verdict in this session: undo it first")
            given = self._save(item, verdict, note.strip())
            self.given.append(given)
            return given

    def check(self, key: str, verdict: str, note: str, image: str | None, box: Box | None) -> Item:
        verdict_review(verdict)
        if len(note) > MAX_NOTE:
            raise ReviewError(f"the note has {len(note)} characters; keep it under {MAX_NOTE}")
        controls = sorted({c for c in note if unicodedata.category(c) == "Cc" and c not in NOTE_LINE_BREAKS})
        if controls:
            raise ReviewError(f"the note holds control character(s) {', '.join(f'U+{ord(c):04X}' for c in controls)}"
                              ": write it as plain text (tabs and line breaks are fine)")
        if image is not None and not key.startswith("feedback:"):
            self.inside_raw(image)
        item = self.by_key.get(key)
        if item is None:
            raise ReviewError(f"no face {key!r} in this review queue: reload the page")
        if image is not None and image != item.image:
            raise ReviewError(f"the verdict names image {image!r}, but queue item {key!r} is image {item.image!r}: "
                              "reload the page")
        if box is not None and box != item.box:
            raise ReviewError(f"the verdict names box {box.as_dict()}, but queue item {key!r} has box "
                              f"{item.box.as_dict()}: reload the page")
        return item

    def inside_raw(self, image: str) -> Path:
        """The photo's path, refusing any that is not a file under data/raw."""
        path = (self.raw / image).resolve()
        if not path.is_relative_to(self.raw.resolve()) or Path(image).is_absolute():
            raise ReviewError(f"image {image!r} is outside {self.raw}: the review only judges photos under it")
        if not path.is_file():
            raise ReviewError(f"image {image!r} does not exist under {self.raw}")
        return path

    def _save(self, item: Item, verdict: str, note: str) -> Given:
        review, label = verdict_review(verdict)
        reason = f"bbt review ({item.source}): {item.why}" + (f"; note: {note}" if note else "")
        before = read_exactly(self.corrections_path)
        copied = verdict_file = None
        image = item.image
        if item.source == "feedback":
            if verdict != "unusable":
                copied = self._copy_feedback_photo(item, label or STRANGERS_FOLDER)
                image = copied.relative_to(self.raw).as_posix()
            verdict_file = Path(item.image).parent / VERDICT_FILE
        after = before
        if copied is not None or item.source != "feedback":
            after = append_row(self._unjudged(before, item), [image, item.box.x, item.box.y, item.box.w, item.box.h, label, review,
                                        reason])
            try:
                self._write_validated(after)
            except DataError:
                if copied is not None:
                    copied.unlink(missing_ok=True)
                raise
        if verdict_file is not None:
            write_atomically(verdict_file, json.dumps({
                "verdict": verdict, "note": note, "image": image if copied else None,
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=2) + "\n")
        return Given((item,), verdict, before, after, copied, verdict_file)

    def give_group(self, group_id: str, keys: list[str], verdict: str, note: str = "") -> Given:
        """One verdict for the faces `keys` of group `group_id` (the reviewer deselected the rest): a row per
        face, each saying it came from this group verdict, written at once; undo takes them all back."""
        group = self.groups.get(group_id)
        if group is None:
            raise ReviewError(f"no group {group_id!r} in this review session: reload the page")
        if not keys:
            raise ReviewError(f"group {group_id}: no face is selected; select the faces the verdict is for")
        foreign = [key for key in keys if key not in group.keys]
        if foreign:
            raise ReviewError(f"{foreign[0]!r} is not a face of group {group_id}: reload the page")
        if len(set(keys)) != len(keys):
            raise ReviewError(f"group {group_id}: a face is named twice in the verdict")
        items = [self.check(key, verdict, note, None, None) for key in keys]
        review, label = verdict_review(verdict)
        says = group.proposal.says
        origin = (f"bbt review, group verdict {group_id} ({len(keys)} of its {len(group.keys)} faces; proposed: "
                  f"{says} at distance {group.proposal.distance:.2f}, threshold {group.proposal.threshold:.2f})")
        with self._lock:
            done = self.done
            if any(key in done for key in keys):
                raise ReviewError(f"group {group_id}: a face already has a verdict in this session: reload the page")
            before = read_exactly(self.corrections_path)
            after = before
            for item in items:
                reason = f"{origin}: {item.why}" + (f"; note: {note.strip()}" if note.strip() else "")
                after = append_row(self._unjudged(after, item), [item.image, item.box.x, item.box.y, item.box.w, item.box.h, label,
                                           review, reason])
            self._write_validated(after)
            given = Given(tuple(items), verdict, before, after, None, None, group_id)
            self.given.append(given)
            return given

    @staticmethod
    def _unjudged(text: str, item: Item) -> str:
        """`text` ready for the item's new row: a face judged again (a revisit) loses its old row."""
        return without_row(text, item.image, item.box) if item.source == "revisit" else text

    def _copy_feedback_photo(self, item: Item, folder: str) -> Path:
        source = Path(item.image)
        target = self.raw / folder / f"feedback-{item.feedback_id}{source.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return target

    def _write_validated(self, text: str) -> None:
        """Replace review/corrections.csv with `text` once it passes clean's validation (ReviewError if not)."""
        candidate = self.corrections_path.with_name(f".{self.corrections_path.name}.candidate")
        candidate.write_text(text, encoding="utf-8", newline="")
        try:
            load_corrections(candidate, self.annotations, self.raw)
        except DataError as err:
            candidate.unlink()
            raise ReviewError(str(err).replace(str(candidate), str(self.corrections_path))) from None
        os.replace(candidate, self.corrections_path)

    def undo(self) -> Given:
        """Take the last verdict of this session back: its rows (all of a group verdict's), its copied photo, its
        verdict.json."""
        with self._lock:
            if not self.given:
                raise ReviewError("nothing to undo: no verdict was given in this session")
            last = self.given[-1]
            if last.after != last.before:
                now = read_exactly(self.corrections_path)
                if now != last.after:
                    raise ReviewError(f"{self.corrections_path} changed outside this review since the last "
                                      "verdict: undo it by editing the file")
                write_atomically(self.corrections_path, last.before)
            if last.copied is not None:
                last.copied.unlink(missing_ok=True)
            if last.verdict_file is not None:
                last.verdict_file.unlink(missing_ok=True)
            return self.given.pop()


def append_row(text: str, row: list[object]) -> str:
    """The CSV text with one more row, quoted as needed; a file that lacks its final newline gets one first."""
    if text and not text.endswith("\n"):
        text += "\n"
    if not text:
        text = ",".join(CORRECTION_COLUMNS) + "\n"
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(row)
    return text + line.getvalue()


def read_exactly(path: Path) -> str:
    """The file's text with its line ends as they are: text mode would read a note's CR LF as LF."""
    return path.read_bytes().decode("utf-8")


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, path)
