"""POST /feedback and the page's "wrong?" flow against a real server keeping feedback in a temporary store (one
worker, shared by the module). A server with feedback off is the staging deployment's (tests/integration/
test_staging.py: public deployments keep nothing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bbt.config import load_params
from bbt.review.feedback import FeedbackStore
from bbt.serving.admission import MB
from tests.conftest import Project, Server, start_server, stop_server
from tests.integration.test_browser import assert_readable, chromium, single_face_photo

pytestmark = pytest.mark.integration

STORE_MB = 10  # the smallest bound params validation allows (one photo at the upload limit)


def served_folder(trained_project: Project, folder: Path, feedback_dir: str) -> Path:
    """A working directory for `bbt serve` whose params.yaml is the project's with serve.feedback_dir set."""
    params = yaml.safe_load((trained_project.root / "params.yaml").read_text())
    params["serve"].update(feedback_dir=feedback_dir, feedback_max_mb=STORE_MB)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def serve_from(trained_project: Project, folder: Path) -> Server:
    one_worker = Project(trained_project.root, {**trained_project.env,
                                                "BENTOML_CONFIG_OPTIONS": "services.ActorService.workers=1"})
    return start_server(one_worker, ["bbt", "serve"], folder / "serve.log", cwd=folder)


@pytest.fixture(scope="module")
def feedback_on(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("feedback-on")
    server = serve_from(trained_project, served_folder(trained_project, root / "served", str(root / "store")))
    server.store = FeedbackStore(root / "store", STORE_MB)
    yield server
    stop_server(server)


@pytest.fixture()
def store(feedback_on: Server) -> FeedbackStore:
    """The on-server's store, empty at the start of each test."""
    shutil.rmtree(feedback_on.store.folder, ignore_errors=True)
    return feedback_on.store


def classify(server: Server, photo: Path) -> dict:
    response = httpx.post(f"{server.url}/classify", files={"image": (photo.name, photo.read_bytes())}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def report(server: Server, photo: Path, box: dict, label: str, consent: str | None = "true",
           **extra: str) -> httpx.Response:
    fields = {**{k: str(v) for k, v in box.items()}, "label": label, **extra}
    if consent is not None:
        fields["consent"] = consent
    return httpx.post(f"{server.url}/feedback", data=fields, files={"image": ("any-name.png", photo.read_bytes())},
                      timeout=120)


def other_label(label: str) -> str:
    return "raj" if label != "raj" else "howard"


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]


def nothing_stored(store: FeedbackStore) -> bool:
    return store.items() == [] and not any(p.is_dir() for p in store.folder.glob("*"))


# ---- the route ------------------------------------------------------------------------------------------------

def test_a_report_with_consent_is_kept_with_the_models_own_answer(feedback_on: Server, store: FeedbackStore) -> None:
    photo = single_face_photo(feedback_on, "sheldon")
    answer = classify(feedback_on, photo)
    [face] = answer["faces"]
    # A box a few pixels off still names that face (IoU >= 0.5); the model's answer is computed again, not sent.
    nudged = {**face["box"], "x": face["box"]["x"] + 4}
    response = report(feedback_on, photo, nudged, other_label(face["label"]), model_label="unknown")
    assert response.status_code == 201, response.text
    body = response.json()
    [item] = store.items()
    assert body["id"] == item.id and body["photo_bytes"] == len(photo.read_bytes())
    assert item.photo.read_bytes() == photo.read_bytes() and item.photo.name == "photo.jpg"
    assert item.box.as_dict() == face["box"], "the box exactly as /classify answered it"
    assert (item.model_label, item.model_confidence) == (face["label"], face["confidence"])
    assert item.user_label == other_label(face["label"]) and item.model_version == answer["model"]["version"]
    assert body["kept"] == {"box": face["box"], "model_label": face["label"], "model_confidence": face["confidence"],
                            "user_label": item.user_label, "model_version": item.model_version}
    assert item.id.endswith(f"-{face['box']['x']}-{face['box']['y']}")


@pytest.mark.parametrize("consent", [None, "false", ""])
def test_without_consent_nothing_is_stored(feedback_on: Server, store: FeedbackStore, consent: str | None) -> None:
    photo = single_face_photo(feedback_on, "sheldon")
    [face] = classify(feedback_on, photo)["faces"]
    assert_error(report(feedback_on, photo, face["box"], other_label(face["label"]), consent=consent), 400,
                 "nothing was stored", "consent=true")
    assert nothing_stored(store)


def test_a_box_no_detected_face_matches_is_refused(feedback_on: Server, store: FeedbackStore) -> None:
    photo = single_face_photo(feedback_on, "sheldon")
    [face] = classify(feedback_on, photo)["faces"]
    box = face["box"]
    tampered = {**box, "x": box["x"] + box["w"]}  # beside the face: IoU 0
    assert_error(report(feedback_on, photo, tampered, other_label(face["label"])), 400,
                 f"matches the box x={tampered['x']}, y={box['y']}, w={box['w']}, h={box['h']}")
    assert nothing_stored(store)


def test_a_wrong_label_or_the_models_own_answer_is_refused(feedback_on: Server, store: FeedbackStore) -> None:
    photo = single_face_photo(feedback_on, "sheldon")
    [face] = classify(feedback_on, photo)["faces"]
    assert_error(report(feedback_on, photo, face["box"], "penny"), 400,
                 "howard, leonard, raj, sheldon, unknown")
    assert_error(report(feedback_on, photo, face["box"], face["label"]), 400, "already answers")
    assert nothing_stored(store)


def test_a_full_store_refuses_and_keeps_nothing(feedback_on: Server, store: FeedbackStore) -> None:
    filler = store.folder / "earlier-reports" / "blob"
    filler.parent.mkdir(parents=True)
    filler.write_bytes(bytes(STORE_MB * 1024 * 1024 - 1000))
    photo = single_face_photo(feedback_on, "sheldon")
    [face] = classify(feedback_on, photo)["faces"]
    assert_error(report(feedback_on, photo, face["box"], other_label(face["label"])), 507, "full", "nothing was kept")
    assert store.items() == [] and [p.name for p in store.folder.iterdir() if p.is_dir()] == ["earlier-reports"]


def test_bad_requests_get_json_errors(feedback_on: Server, store: FeedbackStore) -> None:
    url = f"{feedback_on.url}/feedback"
    assert_error(httpx.post(url, json={"label": "raj"}), 415, "multipart/form-data")
    assert_error(httpx.post(url, data={"consent": "true", "label": "raj", "x": 1, "y": 1, "w": 9, "h": 9},
                            files={"image": (None, "text, not a file")}), 400, "no file in the field 'image'")
    assert_error(httpx.post(url, data={"consent": "true", "label": "raj", "x": 1, "y": 1, "w": 9, "h": 9},
                            files={"image": ("notes.txt", b"not a photo")}), 400, "not a recognised image")
    assert_error(httpx.get(url), 405)
    assert nothing_stored(store)


def test_a_photo_over_the_upload_limit_is_refused_as_classify_refuses_it(feedback_on: Server,
                                                                        store: FeedbackStore) -> None:
    photo = single_face_photo(feedback_on, "sheldon")
    [face] = classify(feedback_on, photo)["faces"]
    limit = int(load_params(feedback_on.project.root / "params.yaml").serve.max_upload_mb * MB)
    too_large = photo.read_bytes().ljust(limit + 1, b"\0")  # still a photo to a decoder: padding after its end
    fields = {**{k: str(v) for k, v in face["box"].items()}, "label": other_label(face["label"]), "consent": "true"}
    refused = httpx.post(f"{feedback_on.url}/feedback", data=fields, files={"image": ("big.jpg", too_large)},
                         timeout=120)
    assert_error(refused, 413, "MB limit")
    classify_refused = httpx.post(f"{feedback_on.url}/classify", files={"image": ("big.jpg", too_large)}, timeout=120)
    assert refused.json() == classify_refused.json() and classify_refused.status_code == 413
    assert nothing_stored(store)
    schema = httpx.get(f"{feedback_on.url}/docs.json").json()["paths"]["/feedback"]["post"]
    assert {"201", "400", "403", "507"} <= set(schema["responses"])


# ---- the page -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def open_result(browser, server: Server) -> tuple[object, dict]:
    """A fresh page on `server` showing a one-face photo's result; (page, that face as /classify answers it)."""
    photo = single_face_photo(server, "sheldon")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server.url + "/")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector(".box", timeout=60_000)
    [face] = classify(server, photo)["faces"]
    return page, face


def choose_wrong_answer(page, face: dict) -> str:
    """'wrong?' on the face, then an actor other than the model's; returns that actor."""
    box = ",".join(str(face["box"][k]) for k in ("x", "y", "w", "h"))
    page.click(f'button.wrong[data-face="1"][data-box="{box}"]')
    assert page.locator("#feedback").is_visible() and not page.locator("#feedback-consent").is_visible()
    assert page.locator(f'#feedback-choices button[data-label="{face["label"]}"]').is_disabled()
    label = other_label(face["label"])
    page.click(f'#feedback-choices button[data-label="{label}"]')
    text = page.inner_text("#feedback-consent-text")
    for kept in ("the photo", "the box of face 1", "the model's answer", f"your answer ({label.capitalize()})",
                 "the model version", "this server", "retrain"):
        assert kept in text, text
    return label


def test_cancel_keeps_nothing(browser, feedback_on: Server, store: FeedbackStore) -> None:
    page, face = open_result(browser, feedback_on)
    choose_wrong_answer(page, face)
    page.click("#feedback-cancel")
    assert page.get_attribute("#feedback-status", "data-state") == "cancelled"
    assert not page.locator("#feedback").is_visible()
    page.wait_for_timeout(500)  # a request sent by mistake would have arrived by now
    assert nothing_stored(store)
    page.close()


def test_keep_it_stores_one_report_with_the_keyboard(browser, feedback_on: Server, store: FeedbackStore) -> None:
    page, face = open_result(browser, feedback_on)
    page.focus('button.wrong[data-face="1"]')
    page.keyboard.press("Enter")
    label = other_label(face["label"])
    page.focus(f'#feedback-choices button[data-label="{label}"]')
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "feedback-keep"
    page.screenshot(path=str(store.folder.parent / "feedback-consent.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_selector('#feedback-status[data-state="stored"]', timeout=60_000)
    assert page.inner_text("#feedback-status").startswith("Stored")
    [item] = store.items()
    assert (item.user_label, item.model_label, item.box.as_dict()) == (label, face["label"], face["box"])
    assert page.inner_text('button.wrong[data-face="1"]') == "reported"
    # Every column still fits beside the photo, and on a phone.
    assert page.evaluate("(t => t.scrollWidth - t.clientWidth)(document.querySelector('.tables'))") == 0
    page.set_viewport_size({"width": 390, "height": 844})
    assert_readable(page)
    page.close()
