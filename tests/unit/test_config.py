"""params.yaml loading and the errors a user gets for a wrong config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbt.config import ConfigError, load_params
from bbt.model.candidates import candidates, heads

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_load_and_hold_the_original_grid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.clean.scale_factor == 1.3 and params.clean.min_neighbors == 5
    grid = heads(params.search, ("pixel_wavelet",))
    assert len(grid) == 14
    assert {c.family for c in grid} == {"svm", "random_forest", "logistic_regression"}
    # Every head is searched with every open-set rule.
    assert len(candidates(params.search, ("pixel_wavelet",))) == 14 * len(params.search.open_set_rules)


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_params(tmp_path / "absent.yaml").split.seed == 42


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clean:\n  scale_factr: 1.2\n", r"unknown key\(s\) clean.scale_factr"),
        ("trian:\n  x: 1\n", r"unknown section\(s\) \['trian'\]"),
        ("split:\n  test_size: lots\n", r"split.test_size = 'lots' is not a valid float"),
        ("split:\n  test_size: 1.5\n", "split.test_size must be a fraction"),
        ("featurize:\n  feature_sets: [pixels]\n", "unknown feature set 'pixels'"),
        ("search:\n  families: [xgboost]\n", "unknown family 'xgboost'"),
        ("search:\n  open_set_rules: [cosine]\n", "unknown open-set rule 'cosine'"),
        ("search:\n  objective: accuracy\n", "search.objective 'accuracy' is unknown"),
        ("search:\n  target_false_accept: 5\n", "search.target_false_accept must be a fraction"),
        ("clean: [1, 2]\n", "section 'clean' must be a mapping"),
        ("clean:\n  scale_factor: [1\n", "not valid YAML"),
    ],
)
def test_wrong_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path, text))


def test_unknown_hyperparameter_is_a_config_error(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "search:\n  grid:\n    svm:\n      c: [1]\n"))
    with pytest.raises(ConfigError, match=r"search.grid.svm has unknown hyperparameter\(s\) \['c'\]"):
        candidates(params.search, ("pixel_wavelet",))


def test_every_candidate_can_predict_probabilities() -> None:
    import numpy as np

    params = load_params(REPO / "params.yaml")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8))
    y = np.repeat(["howard", "leonard", "raj", "sheldon"], 10)
    for candidate in heads(params.search, ("pixel_wavelet",)):
        proba = candidate.head(seed=0).fit(X, y).predict_proba(X[:3])
        assert proba.shape == (3, 4) and np.allclose(proba.sum(axis=1), 1.0), candidate.name


def test_the_bento_pins_what_the_lock_file_installs_and_the_model_imports() -> None:
    """bentofile.yaml pins by hand (offline builds): each pin must be uv.lock's version, and every package
    the logged model needs must be pinned."""
    import tomllib

    from bbt.pipeline.register import RUNTIME_PACKAGES

    root = Path(__file__).resolve().parents[2]
    locked = {p["name"]: p["version"] for p in tomllib.loads((root / "uv.lock").read_text())["package"]
              if "version" in p}
    pins = dict(pin.split("==") for pin in yaml.safe_load((root / "bentofile.yaml").read_text())["python"]["packages"])
    assert {name: version for name, version in pins.items() if locked.get(name) != version} == {}
    assert set(RUNTIME_PACKAGES) - set(pins) == set()
