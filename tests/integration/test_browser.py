"""End to end in Debian's headless Chromium (no browser download): the drop-box page against the real server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium() -> Iterator[object]:
    """Debian's headless Chromium under Playwright, closed on leaving."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(bento_server: Server) -> Iterator[object]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        # Only our own server: a request anywhere else (a CDN, fonts) would fail the test below.
        outside: list[str] = []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(bento_server.url)
                      else (outside.append(route.request.url), route.abort()))
        page = context.new_page()
        page.outside_requests = outside
        page.goto(bento_server.url + "/")
        yield page


def single_face_photo(server: Server, label: str = "sheldon", split: str = "train") -> Path:
    """A photo of the split in which the detector finds exactly one face, reviewed as `label` (an actor, or
    'unknown' for a stranger)."""
    root = server.project.root
    faces = np.load(root / "artifacts/faces/faces.npz")
    detections = pd.read_csv(root / "artifacts/faces/detections.csv")
    found = detections.groupby("image").size()
    for i in np.load(root / "artifacts/features/split.npz")[split]:
        name = str(faces["images"][i])
        if found.get(name) == 1 and name.endswith(".jpg") and faces["labels"][i] == label:
            return root / "data/raw" / name
    raise AssertionError(f"no single-face photo of {label} in the {split} split")


def crowded_photos(server: Server) -> list[Path]:
    """The dataset's largest group photo (the most faces found) and, among photos of five faces or more, the one
    whose faces are the smallest."""
    root = server.project.root
    widths = pd.read_csv(root / "artifacts/faces/detections.csv").groupby("image")["w"]
    largest = widths.size().idxmax()
    smallest = widths.median()[widths.size() >= 5].idxmin()
    return [root / "data/raw" / largest, root / "data/raw" / smallest]


# The page's layout as the browser drew it: rectangles of the photo, the tags, the table's container and its
# buttons; per table row the answer, its number of lines, its distance and which percentages are bold.
LAYOUT = """() => {
  const rect = (e) => (({ left, top, right, bottom }) => ({ left, top, right, bottom }))(e.getBoundingClientRect());
  const lines = (cell) => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
  };
  const tables = document.querySelector(".tables");
  return {
    photo: rect(document.getElementById("photo")),
    tags: [...document.querySelectorAll(".box .tag")].map(rect),
    tables: rect(tables),
    scroll: tables.scrollWidth - tables.clientWidth,
    buttons: [...document.querySelectorAll("button.wrong")].map(rect),
    threshold: document.getElementById("threshold").textContent,
    rows: [...document.querySelectorAll("#probabilities tbody tr")].map((row) => ({
      answer: row.cells[1].textContent,
      lines: lines(row.cells[1]),
      distance: row.cells[2].textContent,
      bold: [...row.cells].slice(3, 7).map((cell) => Number(getComputedStyle(cell).fontWeight) >= 600),
    })),
  };
}"""


def assert_readable(page) -> dict:
    """Every tag inside the photo and over no other tag; every answer in at most two lines; distances and
    threshold with the same decimals, enough that the comparison shown is the model's; only an actor's name in
    bold; every "wrong?" button inside the table's container, which does not scroll."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    layout = page.evaluate(LAYOUT)
    photo, tags = layout["photo"], layout["tags"]

    def inside(inner: dict, outer: dict) -> bool:
        return (inner["left"] >= outer["left"] - 0.5 and inner["right"] <= outer["right"] + 0.5 and
                inner["top"] >= outer["top"] - 0.5 and inner["bottom"] <= outer["bottom"] + 0.5)

    assert tags and all(inside(tag, photo) for tag in tags), (photo, tags)
    for i, a in enumerate(tags):
        for b in tags[i + 1:]:
            assert (min(a["right"], b["right"]) - max(a["left"], b["left"]) < 0.5 or
                    min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) < 0.5), (a, b)
    decimals = len(layout["threshold"].split(".")[1])
    assert decimals >= 3
    threshold = float(layout["threshold"])
    for row in layout["rows"]:
        assert row["lines"] <= 2, row
        assert len(row["distance"].split(".")[1]) == decimals, (row, layout["threshold"])
        if row["answer"] == "can't tell":  # measured, but answered by its reason: no answer in bold
            assert not any(row["bold"]), row
            continue
        named = row["answer"] in ACTORS
        assert (float(row["distance"]) <= threshold) == named, (row, layout["threshold"])
        assert sum(row["bold"]) == named, row
    assert layout["scroll"] == 0
    assert layout["buttons"] and all(inside(button, layout["tables"]) for button in layout["buttons"])
    return layout


ACTORS = ("Howard", "Leonard", "Raj", "Sheldon")


def test_nothing_but_the_drop_zone_before_an_upload(page) -> None:
    assert page.locator("#dropzone").is_visible()
    assert not page.locator("#result").is_visible()
    assert not page.locator("#message").is_visible()


def test_a_photo_gets_a_box_and_the_right_name(page, bento_server: Server) -> None:
    actor = "sheldon"
    page.set_input_files("#file", str(single_face_photo(bento_server, actor)))
    page.wait_for_selector(".box", timeout=60_000)
    tag = page.inner_text(".box .tag")
    assert "Sheldon" in tag, tag
    assert page.get_attribute(f'.card[data-actor="{actor}"]', "class") == "card best"
    assert page.locator(".card.best").count() == 1
    assert page.inner_text("#message").startswith("Sheldon (")
    assert page.inner_text("#probabilities tbody tr td:nth-child(2)") == "Sheldon"
    rows = page.locator("#probabilities tbody tr")
    assert rows.count() == page.locator(".box").count() >= 1
    box = page.locator(".box").first.bounding_box()
    image = page.locator("#photo").bounding_box()
    assert box and image and box["width"] > 10
    assert image["x"] <= box["x"] and box["x"] + box["width"] <= image["x"] + image["width"] + 1
    page.screenshot(path=str(bento_server.project.root / "browser-result.png"), full_page=True)
    assert page.outside_requests == []


def test_a_text_file_shows_the_error(page, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector(".message.error", timeout=30_000)
    assert "notes.txt" in page.inner_text("#message") and "not a recognised image" in page.inner_text("#message")
    assert page.locator(".box").count() == 0 and page.locator(".card.best").count() == 0


def test_a_file_over_the_limit_is_refused_before_upload(page, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(11 * 1024 * 1024))
    page.set_input_files("#file", str(big))
    page.wait_for_selector(".message.error", timeout=30_000)
    assert "too large" in page.inner_text("#message") and "10 MB" in page.inner_text("#message")


def test_a_photo_without_a_face_says_so(page, tmp_path: Path) -> None:
    from PIL import Image

    wall = tmp_path / "wall.png"
    Image.new("RGB", (400, 300), (210, 190, 160)).save(wall)
    page.set_input_files("#file", str(wall))
    page.wait_for_selector(".message.warning", timeout=30_000)
    assert "No face found" in page.inner_text("#message")


def group_photo(server: Server, path: Path) -> list[str]:
    """A 1920x1280 photo of one held-out face per actor and one stranger, each ~90 px wide and side by side;
    returns the labels, left to right."""
    import cv2

    from bbt.vision.faces import Box
    from bbt.vision.images import decode_image

    root = server.project.root
    faces = np.load(root / "artifacts/faces/faces.npz")
    chosen: dict[str, int] = {}
    for i in np.load(root / "artifacts/features/split.npz")["test"]:
        chosen.setdefault(str(faces["labels"][i]), int(i))
    canvas = np.full((1280, 1920, 3), 150, np.uint8)
    left = 40
    for label in sorted(chosen):
        i = chosen[label]
        image = decode_image((root / "data/raw" / str(faces["images"][i])).read_bytes())
        box = Box(*map(int, faces["boxes"][i]))
        scale = 90 / box.w
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cx, cy = round((box.x + box.w / 2) * scale), round((box.y + box.h / 2) * scale)
        piece = small[max(0, cy - 120):cy + 200, max(0, cx - 100):cx + 100]
        canvas[300:300 + piece.shape[0], left:left + piece.shape[1]] = piece
        left += piece.shape[1] + 20
    cv2.imwrite(str(path), canvas)
    return sorted(chosen)


def test_a_group_photo_of_small_faces_numbers_its_tags_so_none_hides_another(page, bento_server: Server,
                                                                             tmp_path: Path) -> None:
    labels = group_photo(bento_server, tmp_path / "group.png")
    page.set_input_files("#file", str(tmp_path / "group.png"))
    page.wait_for_selector("#stage[data-tags]", timeout=60_000)
    assert_readable(page)
    tags = page.locator(".box .tag")
    assert tags.count() >= len(labels)
    # Each tag is its face's number (which leads to the table row) or its full answer, and its title says it.
    rows = page.locator("#probabilities tbody tr td:nth-child(2)").all_inner_texts()
    for n, answer in enumerate(rows, start=1):
        title = tags.nth(n - 1).get_attribute("title")
        assert title.startswith(f"{n}. {answer}") and tags.nth(n - 1).inner_text() in (str(n), title)
    answers = set(page.locator("#probabilities tbody tr td:nth-child(2)").all_inner_texts())
    assert {"Howard", "Leonard", "Raj", "Sheldon", "not one of the four"} <= answers


def test_crowded_photos_read_on_a_desktop_and_a_phone(page, bento_server: Server) -> None:
    """The dataset's largest group photo (16 faces) and a small photo of small faces, at 1200 and 390 px wide:
    between them every kind of answer, an actor, "not one of the four" and "can't tell"."""
    seen: set[str] = set()
    try:
        for photo in crowded_photos(bento_server):
            page.set_viewport_size({"width": 1200, "height": 900})
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#stage[data-tags]", timeout=60_000)
            layout = assert_readable(page)
            answers = {row["answer"] for row in layout["rows"]}
            assert len(layout["rows"]) >= 5
            # "not one of the four" breaks once in a narrow column, never twice (assert_readable).
            assert "not one of the four" not in answers or any(row["lines"] == 2 for row in layout["rows"])
            if "can't tell" in answers:  # the small faces: drawn apart, counted apart, said why
                assert page.locator(".box.cant-tell").count() == sum(r["answer"] == "can't tell"
                                                                     for r in layout["rows"])
                assert "the model cannot judge" in page.inner_text("#message")
                reason = page.locator("#probabilities tbody tr.cant-tell td:nth-child(2)").first.get_attribute("title")
                assert reason and (" px wide: the model judges faces from " in reason
                                   or "where known people and strangers overlap" in reason), reason
            # The three answers are drawn apart: each its own box style, none shared.
            styles = page.evaluate("""() => [...document.querySelectorAll('.box')].map((box) => [
              box.classList.contains('cant-tell') ? "can't tell" : box.classList.contains('unknown')
                ? 'not one of the four' : 'actor', getComputedStyle(box).borderStyle + ' ' +
                getComputedStyle(box).borderColor])""")
            kinds: dict[str, set[str]] = {}
            for kind, style in styles:
                kinds.setdefault(kind, set()).add(style)
            for kind, style in kinds.items():
                assert all(not style & other for k, other in kinds.items() if k != kind), kinds
            seen |= answers
            page.set_viewport_size({"width": 390, "height": 844})
            assert_readable(page)
    finally:
        page.set_viewport_size({"width": 1200, "height": 900})
    assert {"not one of the four", "can't tell"} <= seen and seen & set(ACTORS), seen


def test_a_stranger_is_not_one_of_the_four(page, bento_server: Server) -> None:
    """A held-out stranger's face: a neutral dashed box, 'not one of the four', and no actor card lit."""
    page.set_input_files("#file", str(single_face_photo(bento_server, "unknown", "test")))
    page.wait_for_selector(".box", timeout=60_000)
    box = page.locator(".box")
    assert box.count() == 1 and "unknown" in (box.get_attribute("class") or "")
    assert page.inner_text(".box .tag") == "1. not one of the four"
    assert page.locator(".card.best").count() == 0
    assert all(page.inner_text(f'.card[data-actor="{a}"] .score') == "" for a in ("howard", "leonard", "raj",
                                                                                  "sheldon"))
    assert "not Howard, Leonard, Raj or Sheldon" in page.inner_text("#message")
    assert page.inner_text("#probabilities tbody tr td:nth-child(2)") == "not one of the four"
    # Every column of the table fits beside the photo (no hidden column behind a scroll bar).
    assert page.evaluate("(t => t.scrollWidth - t.clientWidth)(document.querySelector('.tables'))") == 0
    page.screenshot(path=str(bento_server.project.root / "browser-stranger.png"), full_page=True)
    assert page.outside_requests == []


def test_the_page_has_a_favicon_and_one_list_of_formats(page, bento_server: Server) -> None:
    import httpx

    from bbt.vision.images import SUPPORTED_FOR_PEOPLE

    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert icon == "static/favicon.svg"
    for path in (icon, "favicon.ico"):
        answer = httpx.get(f"{bento_server.url}/{path}", timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
    assert page.inner_text(".hint").startswith(SUPPORTED_FOR_PEOPLE)
    # The unsupported-format error names the same formats as the hint.
    import io

    from PIL import Image

    icon_file = io.BytesIO()
    Image.new("RGB", (32, 32)).save(icon_file, "ICO")  # a format Pillow reads but the service refuses
    refused = httpx.post(f"{bento_server.url}/classify", files={"image": ("icon.ico", icon_file.getvalue())},
                         timeout=30)
    assert refused.status_code == 400 and SUPPORTED_FOR_PEOPLE in refused.json()["error"]
