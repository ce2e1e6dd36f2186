"""The groups view of `bbt review` in Chromium on the real dataset (issue 25 part 1): the detections nobody
reviewed come in groups; the reviewer leaves one face out, gives the group its proposal with one key, and undoes
the whole group verdict with another."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bbt.serving.ready import free_port, wait_until_ready
from tests.conftest import VENV_BIN, Project
from tests.integration.test_browser import chromium

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def review(trained_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`bbt review --model none` in a copy of the trained project (its verdicts reach no other test)."""
    root = tmp_path_factory.mktemp("groups") / "project"
    shutil.copytree(trained_project.root, root, symlinks=True,
                    ignore=shutil.ignore_patterns("mlruns", "bentoml", "prefect", "*.log"))
    port = free_port()
    with (root / "review.log").open("w") as log:
        process = subprocess.Popen([str(VENV_BIN / "bbt"), "review", "--port", str(port), "--model", "none"],
                                   cwd=root, env=trained_project.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/api/queue", 300, 0.5, alive=lambda: process.poll() is None, what="bbt review")
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_a_group_is_judged_with_one_key_but_the_face_left_out_and_undone_as_a_whole(review: tuple[str, Path]) -> None:
    url, root = review
    corrections = root / "review/corrections.csv"
    before = corrections.read_bytes()
    groups = httpx.get(f"{url}/api/groups").json()
    assert groups["problem"] == "" and len(groups["groups"]) > 1
    first = groups["groups"][0]
    assert first["size"] == max(g["size"] for g in groups["groups"] if g["kind"] == "cluster")
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("#image-name:has-text('item 1 of')")
        page.keyboard.press("g")
        page.wait_for_selector(f"#group-title:has-text('{first['id']}, cluster')")
        assert page.locator("#grid button").count() == first["size"]
        left_out = page.locator("#grid button").nth(1)
        left_key = left_out.get_attribute("data-key")
        left_out.click()
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#message:has-text('saved: {first['size'] - 1} faces of {first['id']}')")
        rows = list(csv.DictReader(io.StringIO(corrections.read_text())))[-(first["size"] - 1):]
        verdict = first["verdict"]
        assert all(r["reason"].startswith(f"bbt review, group verdict {first['id']} ({first['size'] - 1} of its "
                                          f"{first['size']} faces") for r in rows)
        assert all((r["label"], r["review"]) == ((verdict, "accepted") if verdict != "stranger" else ("", "stranger"))
                   for r in rows)
        keys = {f"unreviewed:{r['image']}:{r['x']},{r['y']},{r['w']},{r['h']}" for r in rows}
        assert keys == set(first["keys"]) - {left_key}
        after = httpx.get(f"{url}/api/groups").json()["groups"][0]
        assert after["pending"] == [left_key]  # the face left out still waits

        page.keyboard.press("z")
        page.wait_for_selector(f"#message:has-text('undone: {first['id']} ({first['size'] - 1} faces)')")
        assert corrections.read_bytes() == before
        assert httpx.get(f"{url}/api/queue").json()["done"] == 0
