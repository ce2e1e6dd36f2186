"""The release gate: a served model (staging, or production behind its load balancer) is checked over HTTP before
it takes traffic. Probes, the response contract, labelled faces of the test split answered right, strangers
answered "not one of the four", and a latency budget. Every check says what it saw; the report is markdown."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from pydantic import ValidationError

from bbt import UNKNOWN, artifacts
from bbt.config import ReleaseParams
from bbt.errors import DataError
from bbt.serving.contract import Classification
from bbt.vision.faces import Box

MATCH_IOU = 0.5
RETRIES = 5
MAX_WAIT_S = 5.0


@dataclass(frozen=True)
class LabelledFace:
    image: str  # under data/raw
    box: Box
    label: str  # an actor, or UNKNOWN for a stranger


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class SmokeReport:
    url: str
    version: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        rows = "\n".join(f"| {c.name} | {'ok' if c.passed else '**failed**'} | {c.detail} |" for c in self.checks)
        return (f"# Smoke test {verdict}: model version {self.version} at {self.url}\n\n"
                f"| check | result | detail |\n| --- | --- | --- |\n{rows}\n")


def held_out_faces(root: Path, per_label: int) -> list[LabelledFace]:
    """Up to `per_label` reviewed faces of each actor and of the strangers from the held-out test split, in a
    fixed order (the faces no model of this data was trained on)."""
    if not (root / artifacts.FACES).is_file() or not (root / artifacts.SPLIT).is_file():
        raise DataError(f"{root / artifacts.FACES} or {root / artifacts.SPLIT} is missing: the smoke test uses "
                        "the test split; run `dvc repro featurize` first")
    faces = np.load(root / artifacts.FACES)
    test = np.load(root / artifacts.SPLIT)["test"]
    chosen: dict[str, list[LabelledFace]] = {}
    for i in sorted(test, key=lambda i: (str(faces["images"][i]), *map(int, faces["boxes"][i]))):
        label = str(faces["labels"][i])
        if label and len(chosen.setdefault(label, [])) < per_label:
            chosen[label].append(LabelledFace(str(faces["images"][i]), Box(*map(int, faces["boxes"][i])), label))
    return [face for label in sorted(chosen) for face in chosen[label]]


def smoke_test(url: str, raw_dir: Path, faces: list[LabelledFace], params: ReleaseParams,
               expect_version: str | None = None, client: httpx.Client | None = None,
               clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> SmokeReport:
    """Run every check against the service at `url`; never raises for what the service answers."""
    url = url.rstrip("/")  # a load balancer's URL ends in "/": "//livez" is not the probe
    http = client or httpx.Client(timeout=60)
    report = SmokeReport(url, expect_version or "?")
    try:
        report.checks.append(_probes(http, url))
        if not report.checks[-1].passed:
            return report
        answers, latencies, contract = _classify_photos(http, url, raw_dir, faces, clock, sleep)
        report.checks.append(contract)
        served = {a.model.version for a in answers.values()}
        if expect_version is not None:
            report.checks.append(Check("model version", served == {expect_version},
                                       f"served {', '.join(sorted(served)) or 'nothing'}, expected {expect_version}"))
        report.checks += _accuracy(faces, answers, params)
        report.checks.append(_latency(latencies, params))
        report.checks.append(_bad_upload(http, url, sleep))
    except httpx.HTTPError as err:
        report.checks.append(Check("reachable", False, f"{type(err).__name__}: {err}"))
    finally:
        if client is None:
            http.close()
    return report


def _probes(http: httpx.Client, url: str) -> Check:
    answers = {path: http.get(f"{url}{path}").status_code for path in ("/livez", "/readyz")}
    return Check("probes", all(code == 200 for code in answers.values()),
                 ", ".join(f"{path} {code}" for path, code in answers.items()))


def _classify_photos(http: httpx.Client, url: str, raw_dir: Path, faces: list[LabelledFace],
                     clock: Callable[[], float], sleep: Callable[[float], None],
                     ) -> tuple[dict[str, Classification], list[float], Check]:
    answers: dict[str, Classification] = {}
    latencies: list[float] = []
    problems: list[str] = []
    for image in sorted({f.image for f in faces}):
        response, seconds = _post_politely(http, url, Path(image).name, (raw_dir / image).read_bytes(), clock,
                                           sleep)
        latencies.append(seconds)
        if response.status_code != 200:
            problems.append(f"{image}: HTTP {response.status_code} {response.text[:200]}")
            continue
        try:
            answers[image] = Classification.model_validate(response.json())
        except (ValidationError, ValueError) as err:
            problems.append(f"{image}: the answer breaks the contract ({str(err)[:200]})")
    detail = f"{len(answers)} of {len(answers) + len(problems)} photos answered as the contract says"
    return answers, latencies, Check("contract", not problems, detail + ("; " + "; ".join(problems[:3]) if problems
                                                                          else ""))


def _post_politely(http: httpx.Client, url: str, name: str, data: bytes, clock: Callable[[], float],
                   sleep: Callable[[float], None] = time.sleep) -> tuple[httpx.Response, float]:
    """POST /classify as a well-behaved client: a 429 or 503 (nginx's rate limit, a full worker) is waited out
    as its Retry-After says, up to RETRIES times. The latency is the answered attempt's."""
    for attempt in range(RETRIES + 1):
        start = clock()
        response = http.post(f"{url}/classify", files={"image": (name, data)})
        seconds = clock() - start
        if response.status_code not in (429, 503) or attempt == RETRIES:
            return response, seconds
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        sleep(min(max(wait, 0.2), MAX_WAIT_S))
    raise AssertionError("unreachable")


def _answer_for(face: LabelledFace, answers: dict[str, Classification]) -> str | None:
    found = answers.get(face.image)
    if found is None:
        return None
    matching = [f for f in found.faces if face.box.iou(Box(**f.box.model_dump())) >= MATCH_IOU]
    return max(matching, key=lambda f: face.box.iou(Box(**f.box.model_dump()))).label if matching else None


def served_classes(answers: dict[str, Classification]) -> set[str]:
    """The people the served model names: the classes of its answers' probabilities."""
    return {c for a in answers.values() for f in a.faces for c in f.probabilities}


def _accuracy(faces: list[LabelledFace], answers: dict[str, Classification], params: ReleaseParams) -> list[Check]:
    """A face of a person the served model names must be named; any other (a stranger, or a person this model's
    cast lacks) must not be."""
    cast = served_classes(answers)
    actors = [f for f in faces if f.label in cast]
    strangers = [f for f in faces if f.label not in cast]
    right = [f for f in actors if _answer_for(f, answers) == f.label]
    wrong = [f"{f.image} ({f.label} -> {_answer_for(f, answers) or 'no face'})" for f in actors if f not in right]
    recall = len(right) / len(actors) if actors else 0.0
    checks = [Check("actors named right", bool(actors) and recall >= params.min_actor_recall,
                    f"{len(right)} of {len(actors)} ({recall:.0%}; at least {params.min_actor_recall:.0%})"
                    + (f"; wrong: {', '.join(wrong[:5])}" if wrong else ""))]
    if strangers:
        named = [f for f in strangers if _answer_for(f, answers) not in (UNKNOWN, None)]
        rate = len(named) / len(strangers)
        checks.append(Check("strangers not named", rate <= params.max_false_accept,
                            f"{len(named)} of {len(strangers)} strangers given an actor's name ({rate:.0%}; at most "
                            f"{params.max_false_accept:.0%})"))
    return checks


def _latency(latencies: list[float], params: ReleaseParams) -> Check:
    if not latencies:
        return Check("latency", False, "no photo was answered")
    p95 = float(np.percentile(np.array(latencies) * 1000, 95))
    return Check("latency", p95 <= params.latency_budget_ms,
                 f"p95 {p95:.0f} ms over {len(latencies)} photos, one at a time (budget {params.latency_budget_ms:.0f} ms)")


def _bad_upload(http: httpx.Client, url: str, sleep: Callable[[float], None]) -> Check:
    response, _ = _post_politely(http, url, "notes.txt", b"not a photo", time.perf_counter, sleep)
    try:
        has_error = "error" in response.json()
    except ValueError:
        has_error = False
    return Check("bad upload refused", response.status_code == 400 and has_error,
                 f"a text file got HTTP {response.status_code}")
