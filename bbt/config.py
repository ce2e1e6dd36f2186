"""Typed view of params.yaml: one dataclass per section, validated on load."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import yaml

from bbt import CANT_TELL, MAX_PIXELS, UNKNOWN, reads
from bbt.errors import ConfigError
from bbt.model.feature_sets import FEATURE_SETS
from bbt.vision.faces import DETECTORS, DetectorSettings
from bbt.vision.images import peak_bytes_per_pixel

PARAMS_FILE = Path("params.yaml")
# BentoML's own cut-off for a whole request (reading the body included); serve.timeout_s stays under it.
SERVER_TIMEOUT_S = 60
MIB = 1024 * 1024


class Section:
    """A params.yaml section. Reading one of its keys is noted (bbt.reads) so a test can check that dvc.yaml
    declares every key a stage's code reads."""

    section: ClassVar[str] = ""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name in type(self).__dataclass_fields__:
            reads.note_param(f"{type(self).section}.{name}")
        return object.__getattribute__(self, name)


@dataclass(frozen=True)
class DataParams(Section):
    section: ClassVar[str] = "data"
    raw: Path = Path("data/raw")
    annotations: Path = Path("data/annotations.csv")
    corrections: Path = Path("review/corrections.csv")


@dataclass(frozen=True)
class CleanParams(Section, DetectorSettings):
    """The detector's settings (bbt.vision.faces.DetectorSettings, defaults there), and how faces meet reviews."""

    section: ClassVar[str] = "clean"
    iou_threshold: float = 0.5
    crop_size: int = 128
    workers: int = 2


@dataclass(frozen=True)
class FeaturizeParams(Section):
    section: ClassVar[str] = "featurize"
    feature_sets: tuple[str, ...] = tuple(FEATURE_SETS)
    wavelet: str = "db1"
    wavelet_level: int = 5
    size: int = 32


@dataclass(frozen=True)
class SplitParams(Section):
    section: ClassVar[str] = "split"
    test_size: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class SearchParams(Section):
    section: ClassVar[str] = "search"
    cv_folds: int = 5
    seed: int = 42
    families: tuple[str, ...] = ("logistic_regression", "svm", "random_forest")
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    objective: str = "open_set_f05"
    open_set_rules: tuple[str, ...] = ("nearest_face", "probability")
    target_false_accept: float = 0.05
    min_width_recall: float = 0.9
    band_precision: float = 0.9


@dataclass(frozen=True)
class AuditParams(Section):
    section: ClassVar[str] = "audit"
    feature_set: str = "face_embedding"
    folds: int = 5
    repeats: int = 3
    seed: int = 42


@dataclass(frozen=True)
class RegisterParams(Section):
    section: ClassVar[str] = "register"
    model_name: str = "bbt-actor-classifier"
    alias: str = "champion"


@dataclass(frozen=True)
class ServeParams(Section):
    section: ClassVar[str] = "serve"
    max_upload_mb: float = 10
    max_megapixels: float = MAX_PIXELS / 1e6
    max_pending: int = 16
    worker_memory_mb: float = 768
    timeout_s: float = 30
    upload_timeout_s: float = 30  # a request's whole body must arrive within this (a 408 otherwise)
    max_uploads_per_client: int = 8  # requests one client address may have open in a worker (a 429 past it)
    monitoring_dir: Path = Path("monitoring")  # what the service answers, per request (bbt/monitoring/answers.py)
    feedback_dir: str = ""  # where reported wrong answers are kept (bbt/review/feedback.py); empty = off
    feedback_max_mb: float = 500.0


@dataclass(frozen=True)
class MonitorParams(Section):
    """How `bbt monitor` judges drift (bbt/monitoring/report.py)."""

    section: ClassVar[str] = "monitor"
    days: int = 7
    alpha: float = 0.01
    min_faces: int = 30


@dataclass(frozen=True)
class ReleaseParams(Section):
    """The gate a model passes before it takes traffic (bbt/release/smoke.py), in staging and in production."""

    section: ClassVar[str] = "release"
    enabled: bool = False  # the retrain flow releases a new champion (bbt release) when it moves @champion
    deployment: str = ""  # ... and rolls it out to this production deployment ("" = staging only)
    faces_per_label: int = 12
    min_actor_recall: float = 0.9
    max_false_accept: float = 0.2
    latency_budget_ms: float = 1500


@dataclass(frozen=True)
class ReviewParams(Section):
    """How `bbt review` groups the detections nobody reviewed (bbt/review/clusters.py)."""

    section: ClassVar[str] = "review"
    min_cluster_size: int = 5  # HDBSCAN: the fewest faces a cluster has
    min_samples: int = 2  # HDBSCAN: neighbours a face needs to be in a cluster's core
    group_size: int = 48  # the most faces one group shows (the faces no cluster takes are grouped by proposal)
    outlier_distance: float = 0.5  # a member this far from its group's centre is marked as an odd one out
    collages: tuple[str, ...] = ()  # photos (paths under data.raw) declared collages: their faces may share a cluster


def largest_photo_mb(serve: ServeParams) -> float:
    """The memory (MiB) the largest photo the service admits can take: its upload and its decoding."""
    return serve.max_megapixels * 1e6 * peak_bytes_per_pixel() / MIB + serve.max_upload_mb


# A cast member's name: what review/corrections.csv's label column, the model's classes and the page's cards hold.
PERSON_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Words that are answers or verdicts, never a person's name.
RESERVED_NAMES = (UNKNOWN, CANT_TELL, "stranger", "unusable", "rejected", "accepted")


def check_person_name(name: object) -> str | None:
    """Why `name` cannot be a cast member's name, or None when it can."""
    if not isinstance(name, str) or not PERSON_NAME.fullmatch(name):
        return (f"{name!r} is not a name: use 1-32 lower-case letters, digits, '-' or '_', starting with a letter "
                "(e.g. penny)")
    if name in RESERVED_NAMES:
        return f"{name!r} is an answer or a verdict, not a name; choose another name"
    return None


@dataclass(frozen=True)
class Params:
    # The people the model names (params.yaml's `cast`, which has no default: the one place they are listed). The
    # pipeline trains one class per name, from the faces data/annotations.csv and review/corrections.csv accept as it.
    cast: tuple[str, ...] = ()
    data: DataParams = field(default_factory=DataParams)
    clean: CleanParams = field(default_factory=CleanParams)
    featurize: FeaturizeParams = field(default_factory=FeaturizeParams)
    split: SplitParams = field(default_factory=SplitParams)
    search: SearchParams = field(default_factory=SearchParams)
    audit: AuditParams = field(default_factory=AuditParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    serve: ServeParams = field(default_factory=ServeParams)
    monitor: MonitorParams = field(default_factory=MonitorParams)
    release: ReleaseParams = field(default_factory=ReleaseParams)
    review: ReviewParams = field(default_factory=ReviewParams)

    def __getattribute__(self, name: str) -> Any:
        if name == "cast":
            reads.note_param("cast")
        return object.__getattribute__(self, name)


T = TypeVar("T")


def _section(cls: type[T], raw: Any, name: str, source: Path) -> T:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"valid keys are {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        default = getattr(defaults, key)
        try:
            if isinstance(default, Path):
                value = Path(value)
            elif isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                value = tuple(value if isinstance(value, list) else [value])
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}: {name}.{key} = {value!r} is not a valid {type(default).__name__}"
            ) from None
        values[key] = value
    return cls(**values)


def _failure(source: str | Path) -> Callable[[str, str], NoReturn]:
    def fail(key: str, why: str) -> NoReturn:
        raise ConfigError(f"{source}: {key} {why}")
    return fail


def validate(params: Params, source: str | Path) -> None:
    """A ConfigError naming the key and the fix for the first value params.yaml may not hold."""
    # The search's registries import scikit-learn: only here, so that a serving worker (load_serve_params) does not.
    from bbt.model.candidates import FAMILIES
    from bbt.model.openset import OBJECTIVES, RULES

    fail = _failure(source)
    if params.cast:  # a params.yaml without one fails where the cast is needed (cast_of, load_cast)
        validate_cast(params.cast, source)

    def choices(key: str, chosen: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
        if not chosen:
            fail(key, f"must name at least one {what}")
        for value in chosen:
            if value not in allowed:
                fail(key, f"has unknown {what} {value!r}; choose from {allowed}")

    if params.clean.detector not in DETECTORS:
        fail("clean.detector", f"{params.clean.detector!r} is unknown; choose from {list(DETECTORS)}")
    if params.clean.yunet_side < 0 or params.clean.decode_side < 0:
        fail("clean.yunet_side/decode_side", "must be >= 0 (0 = the photo's own size)")
    if not 0.0 < params.clean.min_score < 1.0:
        fail("clean.min_score", "must be between 0 and 1 (YuNet's face score; 0.5 is libfacedetection's default)")
    if params.clean.hog_side < 0 or not 0 <= params.clean.hog_upsample <= 2:
        fail("clean.hog_side/hog_upsample", "must be >= 0 (hog_side) and 0, 1 or 2 (hog_upsample)")
    if not 1.0 < params.clean.scale_factor < 3.0:
        fail("clean.scale_factor", "must be between 1 and 3 (the annotations used 1.3)")
    if params.clean.min_neighbors < 0 or params.clean.min_eyes < 0:
        fail("clean.min_neighbors/min_eyes", "must be >= 0")
    if not 0.0 < params.clean.iou_threshold <= 1.0:
        fail("clean.iou_threshold", "must be in (0, 1]")
    if params.clean.crop_size < 32:
        fail("clean.crop_size", "must be at least 32 pixels")
    if params.clean.workers < 1:
        fail("clean.workers", "must be at least 1")
    choices("featurize.feature_sets", params.featurize.feature_sets, tuple(FEATURE_SETS), "feature set")
    if not 0.0 < params.split.test_size < 1.0:
        fail("split.test_size", "must be a fraction between 0 and 1")
    if params.search.cv_folds < 2:
        fail("search.cv_folds", "must be at least 2")
    choices("search.families", params.search.families, tuple(FAMILIES), "family")
    choices("search.open_set_rules", params.search.open_set_rules, tuple(RULES), "open-set rule")
    if params.search.objective not in OBJECTIVES:
        fail("search.objective", f"{params.search.objective!r} is unknown; choose from {tuple(OBJECTIVES)}")
    if not 0.0 <= params.search.target_false_accept < 1.0:
        fail("search.target_false_accept", "must be a fraction in [0, 1), e.g. 0.05")
    if not 0.0 < params.search.min_width_recall <= 1.0:
        fail("search.min_width_recall", "must be a fraction in (0, 1], e.g. 0.9")
    if not 0.5 < params.search.band_precision <= 1.0:
        fail("search.band_precision", "must be a fraction in (0.5, 1], e.g. 0.9")
    if params.audit.feature_set not in FEATURE_SETS:
        fail("audit.feature_set", f"{params.audit.feature_set!r} is unknown; choose from {tuple(FEATURE_SETS)}")
    if params.audit.folds < 2 or params.audit.repeats < 1:
        fail("audit.folds/repeats", "must be at least 2 (folds) and 1 (repeats)")
    validate_serve(params.serve, source)
    if params.monitor.days < 1 or not 0.0 < params.monitor.alpha < 1.0 or params.monitor.min_faces < 1:
        fail("monitor.days/alpha/min_faces", "must be at least 1 day, a false-alarm rate between 0 and 1 "
                                             "(e.g. 0.01) and at least 1 face")
    release = params.release
    if release.faces_per_label < 1 or not 0 < release.min_actor_recall <= 1 or not 0 <= release.max_false_accept < 1 \
            or release.latency_budget_ms <= 0:
        fail("release.faces_per_label/min_actor_recall/max_false_accept/latency_budget_ms",
             "must be at least 1 face, a recall in (0, 1], a false-accept rate in [0, 1) and a positive budget")
    review = params.review
    if review.min_cluster_size < 2 or review.min_samples < 1 or review.group_size < 1 or review.outlier_distance <= 0:
        fail("review.min_cluster_size/min_samples/group_size/outlier_distance",
             "must be at least 2 faces, 1 neighbour, 1 face and a positive distance")


def validate_cast(cast: tuple[str, ...], source: str | Path) -> None:
    """A ConfigError unless `cast` lists two or more distinct valid names."""
    fail = _failure(source)
    if not cast:
        raise ConfigError(f"{source} has no `cast`: list the people the model names, e.g. `cast: [alice, bob]` "
                          "(README, 'Adding a person')")
    if len(cast) < 2:
        fail("cast", f"= {list(cast)} must list at least two people (a classifier tells people apart)")
    for name in cast:
        why = check_person_name(name)
        if why:
            fail("cast", f"has {why}")
    if len(set(cast)) != len(cast):
        fail("cast", f"= {list(cast)} lists a name twice")


def validate_serve(serve: ServeParams, source: str | Path) -> None:
    """validate() for the serve section alone."""
    fail = _failure(source)
    if serve.max_upload_mb <= 0 or serve.max_megapixels <= 0:
        fail("serve.max_upload_mb/max_megapixels", "must be positive")
    if serve.max_pending < 1:
        fail("serve.max_pending", "must be at least 1 (photos classified or waiting, per worker process)")
    largest = largest_photo_mb(serve)
    if serve.worker_memory_mb < largest:
        fail("serve.worker_memory_mb", f"must hold at least one photo at the limits ({largest:.0f} MB for "
                                       f"{serve.max_megapixels:g} megapixels and a "
                                       f"{serve.max_upload_mb:g} MB upload): raise it or lower them")
    if not 1 <= serve.timeout_s <= SERVER_TIMEOUT_S - 10:
        fail("serve.timeout_s", f"must be between 1 and {SERVER_TIMEOUT_S - 10} seconds (a photo's wait plus its "
                                f"classification; the server cuts any request at {SERVER_TIMEOUT_S} s)")
    if serve.upload_timeout_s <= 0 or serve.max_uploads_per_client < 1:
        fail("serve.upload_timeout_s/max_uploads_per_client", "must be positive seconds and at least 1 upload")
    if not isinstance(serve.feedback_dir, str):
        fail("serve.feedback_dir", f"= {serve.feedback_dir!r} must be a folder name, or empty (\"\") to "
                                   "keep no feedback")
    if serve.feedback_max_mb < serve.max_upload_mb:
        fail("serve.feedback_max_mb", f"must hold at least one photo at the upload limit "
                                      f"({serve.max_upload_mb:g} MB); raise it")


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; a missing file gives the defaults."""
    with reads.paused():
        return _load(Path(path))


def load_serve_params(path: Path | str = PARAMS_FILE) -> ServeParams:
    """params.yaml's serve section alone, validated: what a serving worker reads, without importing the
    pipeline's registries (scikit-learn) that validating the other sections needs."""
    path = Path(path)
    with reads.paused():
        serve = _section(ServeParams, _read(path).get("serve"), "serve", path) if path.exists() else ServeParams()
        validate_serve(serve, path)
    return serve


def _load(path: Path) -> Params:
    if not path.exists():
        return Params()
    raw = _read(path)
    classes = {
        "data": DataParams, "clean": CleanParams, "featurize": FeaturizeParams, "split": SplitParams,
        "search": SearchParams, "audit": AuditParams, "register": RegisterParams, "serve": ServeParams,
        "monitor": MonitorParams, "release": ReleaseParams, "review": ReviewParams,
    }
    params = Params(cast=_cast(raw.get("cast"), path),
                    **{name: _section(cls, raw.get(name), name, path) for name, cls in classes.items()})
    validate(params, path)
    return params


def _cast(raw: Any, path: Path) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: cast must be a list of names, e.g. `cast: [alice, bob]`, got {raw!r}")
    return tuple(raw)


def load_cast(path: Path | str = PARAMS_FILE) -> tuple[str, ...]:
    """params.yaml's cast alone, validated (what `bbt review` reads); noted as read by the caller's stage."""
    path = Path(path)
    reads.note_param("cast")
    with reads.paused():
        if not path.exists():
            raise ConfigError(f"{path} not found: the cast (the people the model names) is listed there")
        cast = _cast(_read(path).get("cast"), path)
        validate_cast(cast, path)
    return cast


def _read(path: Path) -> dict[str, Any]:
    """params.yaml's sections, each known by name."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections (cast, data, clean, featurize, ...)")
    sections = {f.name: f.type for f in fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid sections are {list(sections)}")
    return raw
