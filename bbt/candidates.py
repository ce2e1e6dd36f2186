"""The grid-search candidates of params.yaml: feature set x model family x hyperparameters."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bbt.config import ConfigError, SearchParams

HYPERPARAMETERS = {
    "svm": {"C", "kernel", "gamma"},
    "random_forest": {"n_estimators", "max_depth", "min_samples_leaf"},
    "logistic_regression": {"C"},
}


@dataclass(frozen=True)
class Candidate:
    feature_set: str
    family: str
    hyperparameters: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        settings = ",".join(f"{k}={v}" for k, v in self.hyperparameters)
        return f"{self.feature_set}/{self.family}({settings})"

    def classifier(self, seed: int) -> ClassifierMixin:
        """A fresh, unfitted classifier with predict_proba."""
        hp = dict(self.hyperparameters)
        if self.family == "svm":
            # SVC(probability=True) is deprecated; calibrate one SVC on held-out folds instead.
            return CalibratedClassifierCV(SVC(**hp, random_state=seed), ensemble=False, cv=3)
        if self.family == "random_forest":
            return RandomForestClassifier(**hp, random_state=seed)
        if self.family == "logistic_regression":
            # The original system's liblinear, one-vs-rest: 10x faster than lbfgs on 4096 features, same scores.
            return OneVsRestClassifier(LogisticRegression(**hp, solver="liblinear", random_state=seed))
        raise ValueError(f"unknown model family {self.family!r}")

    def head(self, seed: int) -> Pipeline:
        """Scaler and classifier: what is fitted on top of the (stateless) feature transformer."""
        return Pipeline([("scaler", StandardScaler()), ("clf", self.classifier(seed))])


def candidates(params: SearchParams, feature_sets: tuple[str, ...]) -> list[Candidate]:
    """Every combination of feature set, family and grid point; unknown keys are a config error."""
    found = []
    for family in params.families:
        grid = params.grid.get(family) or {}
        unknown = set(grid) - HYPERPARAMETERS[family]
        if unknown:
            raise ConfigError(
                f"params.yaml: search.grid.{family} has unknown hyperparameter(s) {sorted(unknown)}; "
                f"valid ones are {sorted(HYPERPARAMETERS[family])}"
            )
        keys = sorted(grid)
        values = [v if isinstance(v, list) else [v] for v in (grid[k] for k in keys)]
        for feature_set in feature_sets:
            for combo in itertools.product(*values):
                found.append(Candidate(feature_set, family, tuple(zip(keys, combo))))
    return found
