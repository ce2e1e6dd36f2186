"""The built wheel carries what the installed package reads: the deploy templates and the web page."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The uv the project depends on (pyproject.toml); --offline builds with the hatchling `uv sync` cached.
UV = Path(sys.executable).with_name("uv")
PACKAGE_DATA = ["bbt/deploy/templates/bbt.service.j2", "bbt/deploy/templates/cloud-init.yaml.j2",
                "bbt/deploy/templates/nginx-site.conf.j2", "bbt/deploy/templates/nginx-staging.conf.j2",
                "bbt/serving/web/index.html", "bbt/serving/web/app.js", "bbt/serving/web/app.css",
                "bbt/serving/web/favicon.svg",
                "bbt/review/web/review.html", "bbt/review/web/review.js", "bbt/review/web/review.css"]


def test_the_unpacked_wheel_renders_the_deployment_and_holds_the_page(tmp_path: Path) -> None:
    built = subprocess.run([str(UV), "build", "--wheel", "--offline", "--quiet", "--out-dir", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("bbt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert set(PACKAGE_DATA) <= set(archive.namelist())
        archive.extractall(tmp_path / "site")

    # The wheel's bbt, not the checkout's: PYTHONPATH comes before the editable install, and cwd is elsewhere.
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    check = ("import bbt, importlib.resources as r; print(bbt.__file__); "
             "print((r.files('bbt') / 'serving' / 'web' / 'index.html').read_text()[:15])")
    shown = subprocess.run([sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.splitlines()
    assert shown == [str(tmp_path / "site" / "bbt" / "__init__.py"), "<!doctype html>"]
    rendered = subprocess.run([sys.executable, "-m", "bbt", "deploy", "render", str(work / "out"), "--bento",
                               "bbt-actor-service:abc"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    assert rendered.returncode == 0, rendered.stderr
    assert "bentoml serve bbt-actor-service:abc" in (work / "out" / "bbt.service").read_text()
    assert "client_max_body_size" in (work / "out" / "bbt.conf").read_text()
    assert (work / "out" / "user-data.yaml").read_text().startswith("#cloud-config")
