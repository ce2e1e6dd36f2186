"""`bbt review` in Chromium on a small generated project: its own page gives and undoes verdicts, and a page of
another site open in the same browser cannot (issue 26). The whole loop on the real dataset, from a wrong
answer on the served page to a retrained model, is tests/integration/test_review_loop.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bbt.serving.ready import free_port, wait_until_ready
from tests.conftest import REPO, VENV_BIN
from tests.integration.test_browser import chromium
from tests.unit.review.test_review import review_project

pytestmark = [pytest.mark.integration, pytest.mark.browser]

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`bbt review --model none` on a generated project with four faces to judge: (its URL, the project)."""
    root = review_project(tmp_path_factory.mktemp("review"))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    port = free_port()
    with (root / "review.log").open("w") as log:
        process = subprocess.Popen([str(VENV_BIN / "bbt"), "review", "--port", str(port), "--model", "none"], cwd=root,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/api/queue", 60, 0.2, alive=lambda: process.poll() is None, what="bbt review")
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def cross_site_page(url: str) -> str:
    """What another site can try from the reviewer's browser: a form that posts itself to /api/undo, and a
    no-cors fetch to /api/verdict (both need no CORS permission to be sent)."""
    verdict = json.dumps({"key": "unreviewed:raj/b.png:60,60,20,20", "verdict": "raj"})
    return f"""<!doctype html><html><body>
      <script>fetch("{url}/api/verdict", {{method: "POST", mode: "no-cors", body: {json.dumps(verdict)},
                                            headers: {{"Content-Type": "text/plain"}}}})
                 .finally(() => document.getElementById("undo").submit());</script>
      <form id="undo" method="POST" action="{url}/api/undo"><input name="x" value="1"></form>
    </body></html>"""


def test_the_page_judges_and_undoes_and_another_site_cannot(review: tuple[str, Path], browser) -> None:
    url, root = review
    corrections = root / "review/corrections.csv"
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.route(f"{EVIL}/**", lambda route: route.fulfill(status=200, content_type="text/html",
                                                            body=cross_site_page(url)))
    page = context.new_page()
    page.goto(f"{url}/")
    page.wait_for_selector("#image-name:has-text('item 1 of 4')")  # the first face is shown: keys judge it
    before = corrections.read_bytes()
    page.keyboard.press("s")
    page.wait_for_selector("#progress:has-text('1 of 4 judged')")
    assert "saved" in page.inner_text("#message")
    judged = corrections.read_bytes()
    assert judged != before and b"sheldon,accepted" in judged

    # Another site in the same browser: its form post lands on the app's refusal, and nothing changes.
    attacker = context.new_page()
    with attacker.expect_navigation(url=f"{url}/api/undo"):
        attacker.goto(f"{EVIL}/")
    refusal = attacker.inner_text("body")
    assert "was refused and changed nothing" in refusal and "comes from http://evil.example" in refusal, refusal
    assert corrections.read_bytes() == judged
    assert httpx.get(f"{url}/api/queue").json()["done"] == 1
    # ... nor through a name of its own re-pointed at 127.0.0.1 (DNS rebinding).
    rebound = httpx.get(f"{url}/", headers={"Host": f"evil.example:{url.rsplit(':', 1)[1]}"})
    assert rebound.status_code == 421 and "bbt-token" not in rebound.text

    # The reviewer's own page still writes: undo brings the file back byte for byte.
    page.keyboard.press("z")
    page.wait_for_selector("#progress:has-text('0 of 4 judged')")
    assert "undone" in page.inner_text("#message")
    assert corrections.read_bytes() == before
    context.close()
