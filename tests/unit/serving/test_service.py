"""The service without a trained model: its start-up check of params.yaml and the legacy route's helpers."""

from __future__ import annotations

import base64

import pytest

from bbt.vision.faces import Box
from bbt.vision.images import ImageError


def test_a_service_without_its_params_says_so_at_start_up(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bbt.config import ConfigError
    from bbt.serving.service import ActorService, serve_params

    (tmp_path / "bento").mkdir()
    (tmp_path / "bento" / "params.yaml").write_text("serve:\n  max_upload_mb: 3\n")
    assert serve_params(tmp_path / "bento").max_upload_mb == 3
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"{tmp_path}/params.yaml is missing: .*\(`bbt serve`\)"):
        ActorService()


def test_legacy_helpers() -> None:
    from bbt.model.face_prediction import FacePrediction
    from bbt.serving.contract import decode_data_url, legacy_face

    assert decode_data_url("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    assert decode_data_url(base64.b64encode(b"abc").decode()) == b"abc"
    with pytest.raises(ImageError, match="base64"):
        decode_data_url("data:image/png;base64,@@@")
    with pytest.raises(ImageError, match=";base64"):
        decode_data_url("data:image/png,abc")
    probabilities = {"howard": 0.1, "leonard": 0.1, "raj": 0.7, "sheldon": 0.1}
    face = FacePrediction(Box(1, 2, 3, 4), "raj", "raj", 0.7, probabilities, 0.3, 0.5)
    assert legacy_face(face, ["howard", "leonard", "raj", "sheldon"]) == {
        "class": "raj", "class_probability": [10.0, 10.0, 70.0, 10.0],
        "class_dictionary": {"howard": 0, "leonard": 1, "raj": 2, "sheldon": 3}}
    stranger = FacePrediction(Box(1, 2, 3, 4), "unknown", "raj", 0.7, probabilities, 0.8, 0.5)
    assert legacy_face(stranger, ["howard", "leonard", "raj", "sheldon"])["class"] == "unknown"
