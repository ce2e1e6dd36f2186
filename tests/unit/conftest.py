"""The unit tier: no data, no servers, no trained project; under a minute on 2 cores (`make check`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.unit import test_imports

IMPORT_CHECK = pytest.StashKey[subprocess.Popen]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The every-module import check spends ~20 s importing MLflow, BentoML and Prefect in its own interpreter:
    started here, it runs on the second core beside the in-process tests instead of after them. Under
    pytest-xdist (`make check`: two workers, each collecting everything) the worker that runs the test starts it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(item.name == "test_every_module_imports_on_its_own" for item in session.items):
        session.config.stash[IMPORT_CHECK] = test_imports.start_import_check(
            test_imports.REPO, test_imports.modules_of(test_imports.REPO, "bbt", "flows"))


def pytest_unconfigure(config: pytest.Config) -> None:
    process = config.stash.get(IMPORT_CHECK, None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture()
def import_check(request: pytest.FixtureRequest) -> subprocess.Popen:
    """The every-module import check: the one collection started, or one started now."""
    started = request.config.stash.get(IMPORT_CHECK, None)
    if started is None:
        started = request.config.stash[IMPORT_CHECK] = test_imports.start_import_check(
            test_imports.REPO, test_imports.modules_of(test_imports.REPO, "bbt", "flows"))
    return started
