"""A model card: one short markdown page per registered version, built from explicit inputs (no reads here).

`bbt register` gathers the inputs (bbt/registry/model_cards.py) and logs the card with the model, so it travels into
the BentoML store and every bento; the page links it (GET /model-card).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CARD_FILE = "model_card.md"  # in the logged model's folder (mlflow_model/ in the BentoML store)
CARD_TAG = "model_card"  # the registry version's tag: the card's artifact URI

# What benchmarks/small_faces.py measured (README "Benchmarks", docs/models.md, 2026-11-26): faces of the
# accepted photos scaled to a width and placed on a 1920x1280 JPEG, through the served path. Keyed by the
# detector and its working size; other settings were not measured.
SMALL_FACES_MEASURED: dict[tuple[str, int], str] = {
    ("yunet", 640): ("in 1920x1280 photos, YuNet at 640 px found 0.995 of the faces 96 px wide, 1.000 of those "
                     "64 px wide and 0.973 of those 48 px wide (187 faces each, measured 2026-11-26)"),
    ("yunet", 480): ("in 1920x1280 photos, YuNet at 480 px found 0.968 of the faces 64 px wide and 0.791 of "
                     "those 48 px wide (measured 2026-11-26)"),
    ("hog", 800): ("in 1920x1280 photos, dlib's HOG at 800 px found none of the faces 96, 64 or 48 px wide; it "
                   "misses faces under ~80 px at 800 px, i.e. under ~190 px wide in a 1920 px photo "
                   "(measured 2026-11-26)"),
}

# What can start markdown inside a line (values never start one: newlines are folded): emphasis, code, links,
# images, raw HTML and autolinks, entities, table cells, strike-through, and the escape itself.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>&|~!])")


def md(value: object) -> str:
    """A value as inert markdown text: one line, every character that could start markup backslash-escaped."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


@dataclass(frozen=True)
class CardInputs:
    """Everything a card says, as the register stage read it.

    `faces`: faces per label in each split, e.g. {"train": {"howard": 48, ..., "unknown": 45}, "test": {...}};
    `test_metrics`: bbt.pipeline.evaluate.score's dict (actor_accuracy, actor_f1, false_accept_rate, per_class, ...);
    `model_info`: artifacts/model/model.json (candidate, family, hyperparameters, open_set, detector, ...);
    `search`: params.yaml's search section; `registered_at`: the version's registration time, UTC ISO 8601;
    `photos`: the grouped evaluation (reports/photos.json, bbt.pipeline.photos.summarize), {} when not run.
    """

    model_name: str
    version: str
    registered_at: str
    data_hash: str
    corrections_hash: str
    git_commit: str
    params_hash: str
    model_md5: str
    model_info: dict[str, Any]
    faces: dict[str, dict[str, int]]
    test_metrics: dict[str, Any]
    search: dict[str, Any] = field(default_factory=dict)
    photos: dict[str, Any] = field(default_factory=dict)


def _rate(value: Any) -> str:
    return "not measured" if value is None else f"{float(value):.4f}"


def _data_section(inputs: CardInputs) -> list[str]:
    splits = sorted(inputs.faces)
    labels = sorted({label for counts in inputs.faces.values() for label in counts})
    rows = ["| faces | " + " | ".join(md(s) for s in splits) + " |", "|---|" + "---|" * len(splits)]
    for label in labels:
        name = "strangers (unknown)" if label == "unknown" else label
        rows.append(f"| {md(name)} | " + " | ".join(str(int(inputs.faces[s].get(label, 0))) for s in splits) + " |")
    return ["## Data",
            f"- dataset (data.dvc md5): {md(inputs.data_hash)}",
            f"- second review (review/corrections.csv md5): {md(inputs.corrections_hash)}",
            "", *rows]


def _candidate_section(inputs: CardInputs) -> list[str]:
    info = inputs.model_info
    open_set = info.get("open_set", {})
    hyper = ", ".join(f"{md(k)}={md(v)}" for k, v in sorted(info.get("hyperparameters", {}).items())) or "none"
    lines = ["## Model",
             f"- candidate: {md(info.get('candidate', 'unknown'))}",
             (f"- feature set: {md(info.get('feature_set', 'unknown'))}; family: {md(info.get('family', 'unknown'))}; "
             f"hyperparameters: {hyper}"),
             (f"- open-set rule: {md(open_set.get('rule', 'none'))}, threshold "
             f"{_rate(open_set.get('threshold'))} (a face farther than this is answered \"unknown\")"),
             (f"- faces judged from {md(open_set['min_face_width'])} px wide: narrower ones are answered \"can't "
              "tell\" (learned from held-out faces shrunk to 12-48 px, reports/face_width.csv)"
              if open_set.get("min_face_width") else "- every face is judged, whatever its size"),
             (f"- blurred faces: \"not one of the four\" is said from sharpness {open_set['min_sharpness']:.4f} "
              f"(\"can't tell\" instead under it), names from {open_set.get('min_sharpness_named', 0.0):.4f} (every "
              "answer \"can't tell\" under it); learned from held-out faces blurred by sigma 1-6 px, "
              "reports/sharpness.csv" if open_set.get("min_sharpness") else "- every face is judged, however blurred"),
             _band_line(open_set),
             f"- classes: {md(', '.join(info.get('classes', [])))}",
             *([("- cross-validated per person (recall / precision, faces): " + "; ".join(
                 f"{md(p)} {_rate(f['recall'])} / {_rate(f['precision'])}, {md(f['faces'])}"
                 for p, f in sorted(info["cv_per_person"].items())))] if info.get("cv_per_person") else []),
             f"- model file md5: {md(inputs.model_md5)}; training params hash: {md(inputs.params_hash)}"]
    if inputs.search:
        lines.append("- search params: " + "; ".join(f"{md(k)}={md(v)}" for k, v in sorted(inputs.search.items())))
    return lines


def _band_line(open_set: dict[str, Any]) -> str:
    band = open_set.get("band")
    if not band or band[0] == band[1]:
        return ("- no band of \"can't tell\": the cross-validation found no distances where known people and "
                "strangers overlap")
    return (f"- \"can't tell\" for distances over {_rate(band[0])} up to {_rate(band[1])}, where known people and "
            "strangers overlap (both edges learned by cross-validation grouped by photo)")


def _figure(value: Any) -> str:
    return "no faces" if value is None else md(value)


# The by-width table's columns (bbt.pipeline.photos.face_figures).
WIDTH_COLUMNS = ("actor_faces", "stranger_faces", "actor_recall", "actor_as_other_actor", "actor_as_unknown",
                 "actor_cant_tell", "stranger_false_accept", "stranger_cant_tell")


def _photos_section(inputs: CardInputs) -> list[str]:
    """The grouped evaluation: every figure, by face width and by photo."""
    if not inputs.photos:
        return []
    faces, photos = inputs.photos.get("faces", {}), inputs.photos.get("photos", {})
    lines = ["## Every reviewed face, cross-validated by photo (reports/photos.json)",
             ("- no photo has faces on both sides of a fold; each fold learns its own threshold and band; "
              "the detections nobody reviewed are left out"),
             "- faces: " + ", ".join(f"{md(k)} {_figure(v)}" for k, v in faces.items()),
             "- photos: " + ", ".join(f"{md(k)} {_figure(v)}" for k, v in photos.items()),
             "", "| face width (px) | " + " | ".join(md(c) for c in WIDTH_COLUMNS) + " |",
             "|---|" + "---|" * len(WIDTH_COLUMNS)]
    for bucket, figures in inputs.photos.get("by_width", {}).items():
        lines.append(f"| {md(bucket)} | " + " | ".join(_figure(figures.get(c)) for c in WIDTH_COLUMNS) + " |")
    pairs = inputs.photos.get("confused_pairs", [])
    if pairs:
        lines += ["", "- closest actor pairs (embedding margin: distance to the other's nearest training face minus "
                  "to the actor's own; smallest first): " + "; ".join(
                      f"{md(p['actor'])} to {md(p['other'])}: min {md(p['min_margin'])}, median "
                      f"{md(p['median_margin'])}, closest to the other {md(p['closest_to_other'])} of "
                      f"{md(p['faces'])}" for p in pairs)]
    return lines


def _metrics_section(inputs: CardInputs) -> list[str]:
    m = inputs.test_metrics
    n_actors, n_strangers = m.get("n_actor_faces"), m.get("n_stranger_faces")
    lines = ["## Test metrics (held-out test split, scored at registration)",
             (f"- faces: {md(n_actors if n_actors is not None else 'unknown')} of the actors, "
             f"{md(n_strangers if n_strangers is not None else 'unknown')} of strangers"),
             f"- actor accuracy: {_rate(m.get('actor_accuracy'))}",
             f"- actor macro F1: {_rate(m.get('actor_f1'))}",
             f"- false-accept rate (strangers given an actor's name): {_rate(m.get('false_accept_rate'))}"]
    per_class = m.get("per_class", {})
    if per_class:
        lines.append("- recall per label: " + ", ".join(
            f"{md(label)} {_rate(scores.get('recall'))}" for label, scores in sorted(per_class.items())))
    return lines


def _detector_section(inputs: CardInputs) -> list[str]:
    detector = inputs.model_info.get("detector", {})
    name = str(detector.get("detector", "haar"))
    side = int(detector.get(f"{name}_side", detector.get("max_side", 0)) or 0)
    settings = ", ".join(f"{md(k)}={md(v)}" for k, v in sorted(detector.items()))
    measured = SMALL_FACES_MEASURED.get((name, side),
                                        "not measured for these settings: run benchmarks/small_faces.py")
    return ["## Face detector",
            f"- settings (the same in training and serving): {settings or 'unknown'}",
            f"- crop size: {md(inputs.model_info.get('crop_size', 'unknown'))} px",
            f"- small faces: {md(measured)}"]


def _fewest_faces(inputs: CardInputs) -> list[str]:
    """The actor with the fewest training faces: the one the model knows least."""
    train = {label: n for label, n in inputs.faces.get("train", {}).items() if label != "unknown"}
    if not train:
        return []
    label = min(sorted(train), key=train.__getitem__)
    return [(f"- {md(label)} has the fewest training faces ({int(train[label])} of {sum(train.values())}): the "
            "model's answers for that actor rest on the fewest examples.")]


def _limitations_section(inputs: CardInputs) -> list[str]:
    m = inputs.test_metrics
    n_actors, n_strangers = md(m.get("n_actor_faces", "unknown")), md(m.get("n_stranger_faces", "unknown"))
    step = f"1/{n_strangers}" if m.get("n_stranger_faces") else "undefined (no strangers in the test split)"
    known = md(", ".join(inputs.model_info.get("classes", []))) or "unknown"
    return ["## Known limitations",
            (f"- The test split is small ({n_actors} actor faces, {n_strangers} strangers): one face more or less "
             f"right moves the scores by several points, and the false-accept rate moves in steps of {step}."),
            (f"- Only these people are known: {known}. Anyone else should be \"unknown\", but a stranger who looks "
             "like one of them, near the threshold, can be given that name."),
            *_fewest_faces(inputs),
            ("- Faces unlike the training photos (other lighting, ages, make-up, strong poses) were not measured; "
             "faces turned aside or laughing hard are where the detector's boxes disagree most with the "
             "annotations (docs/models.md)."),
            ("- Faces too small or too blurred for the embedding tend to come back \"unknown\" rather than wrong; "
             "see the small-face figures above.")]


def build_card(inputs: CardInputs) -> str:
    """The card as markdown; the same inputs give the same text, and no input can inject markdown."""
    lines = [f"# Model card: {md(inputs.model_name)} version {md(inputs.version)}",
             "",
             f"- registered: {md(inputs.registered_at)} (UTC)",
             f"- code: git commit {md(inputs.git_commit)}",
             "",
             *_data_section(inputs), "",
             *_candidate_section(inputs), "",
             *_metrics_section(inputs), "",
             *(section + [""] if (section := _photos_section(inputs)) else []),
             *_detector_section(inputs), "",
             *_limitations_section(inputs), "",
             "## Reproduce",
             (f"- git checkout {md(inputs.git_commit.removesuffix('-dirty'))}, then `dvc pull` and `dvc repro`: "
             "the same data hash and params give the same model file (md5 above)."),
             ""]
    return "\n".join(lines)
