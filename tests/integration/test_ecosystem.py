"""Integration: each tool's own client answers a photo as /classify does: MLflow's pyfunc, in process and under
`mlflow models serve`, on the champion the trained project registered."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import Project, Server, start_server, stop_server
from tests.integration.test_server import accepted_photos, post

pytestmark = pytest.mark.integration

CHAMPION = "models:/bbt-actor-classifier@champion"


@pytest.fixture(scope="module")
def photos(trained_project: Project) -> list[bytes]:
    """Held-out photos (an actor's and a stranger's face among them), and bytes that are no photo at all."""
    chosen = accepted_photos(trained_project, "test")
    return [chosen[0].data, chosen[len(chosen) // 2].data, chosen[-1].data]


@pytest.fixture(scope="module")
def classified(bento_server: Server, photos: list[bytes]) -> list[list[dict]]:
    """What /classify answers for each photo: its faces."""
    answers = []
    for data in photos:
        response = post(bento_server, data)
        assert response.status_code == 200, response.text
        answers.append(response.json()["faces"])
    assert any(answer for answer in answers), "the chosen photos should show faces"
    return answers


def test_the_pyfunc_answers_a_photo_as_classify_does(trained_project: Project, photos: list[bytes],
                                                     classified: list[list[dict]], tmp_path: Path) -> None:
    paths = []
    for number, data in enumerate(photos):
        paths.append(tmp_path / f"photo{number}")
        paths[-1].write_bytes(data)
    script = ("import json, sys, mlflow\n"
              f"model = mlflow.pyfunc.load_model({CHAMPION!r})\n"
              "photos = [open(path, 'rb').read() for path in sys.argv[1:]]\n"
              "print(json.dumps(model.predict(photos + [b'not a photo'])))\n")
    ran = trained_project.run("python", "-c", script, *map(str, paths))
    answers = json.loads(ran.stdout.splitlines()[-1])
    assert [answer["faces"] for answer in answers[:-1]] == classified
    assert answers[-1]["faces"] == [] and "not a recognised image" in answers[-1]["error"]


def test_mlflow_models_serve_answers_a_photo_as_classify_does(trained_project: Project, photos: list[bytes],
                                                              classified: list[list[dict]]) -> None:
    server = start_server(trained_project, ["mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local"],
                          trained_project.root / "mlflow-serve.log", ready_path="/ping")
    try:
        body = {"inputs": [base64.b64encode(data).decode() for data in photos]}
        response = httpx.post(f"{server.url}/invocations", json=body, timeout=120)
    finally:
        stop_server(server)
    assert response.status_code == 200, response.text
    assert [answer["faces"] for answer in response.json()["predictions"]] == classified
