"""Each extension point has one registry, and what follows from an entry (dvc.yaml deps, the detection cache's
key, the model's pinned packages) is read from it: adding an entry needs no second list."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbt.config import ConfigError, load_params
from bbt.model.candidates import FAMILIES
from bbt.model.feature_sets import FEATURE_SETS
from bbt.pipeline.detection_cache import DETECTION_MODULES, DETECTION_PACKAGES
from bbt.pipeline.register import RUNTIME_PACKAGES
from bbt.vision.faces import DETECTORS

ROOT = Path(__file__).resolve().parents[2]


def stage_deps(stage: str) -> set[str]:
    return set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"])


def test_every_feature_sets_code_is_a_dependency_of_the_stages_that_build_it() -> None:
    for name, feature_set in FEATURE_SETS.items():
        for stage in ("featurize", "search"):
            assert set(feature_set.modules) <= stage_deps(stage), (name, stage)
        assert set(feature_set.packages) <= set(RUNTIME_PACKAGES), name


def test_every_detectors_code_is_in_clean_and_in_the_detection_cache_key() -> None:
    for name, detector in DETECTORS.items():
        assert set(detector.modules) <= stage_deps("clean") & set(DETECTION_MODULES), name
        assert set(detector.packages) <= set(RUNTIME_PACKAGES) & set(DETECTION_PACKAGES), name


def test_families_packages_are_pinned_with_the_model() -> None:
    for name, family in FAMILIES.items():
        assert set(family.packages) <= set(RUNTIME_PACKAGES), name


def test_params_name_only_registered_entries(tmp_path: Path) -> None:
    """config validates against the registries themselves: a name that is not registered is refused."""
    for section, key, value in (("clean", "detector", "cnn"), ("featurize", "feature_sets", ["hog_features"]),
                                ("search", "families", ["knn"])):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({section: {key: value}}))
        with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
            load_params(tmp_path / "params.yaml")
