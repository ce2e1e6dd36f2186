"""YuNet rebuilt for onnxruntime: the same faces as the yuface wheel's own code, shareable, clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bbt.errors import ModelError
from bbt.vision.yunet import LAYERS, load_layers


def test_the_library_holds_the_known_architecture() -> None:
    layers = load_layers()
    assert len(layers) == LAYERS
    assert Counter(layer.depthwise for layer in layers) == {False: 27, True: 26}
    assert layers[0].weights.shape == (16, 32)  # the 3x3/2 head as a 1x1 over 27 (+ 5 zero) inputs
    assert not layers[0].weights[:, 27:].any()


def test_a_library_that_is_not_libfacedetection_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "libfacedetection.so"
    fake.write_bytes(b"not a shared library")
    with pytest.raises(ModelError, match=r"not the libfacedetection .* reinstall the package yuface"):
        load_layers(fake)
