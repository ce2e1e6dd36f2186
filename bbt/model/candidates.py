"""The grid-search candidates of params.yaml: feature set x model family x hyperparameters x open-set rule.

Ties on the search objective go to the simpler candidate, by a fixed rule (never by a timing): fewer features
(the order of FEATURE_SETS), then the simpler family (the order of FAMILIES), then the more regularised or smaller
model (each family's `simplicity`), then the open-set rule (the order of bbt.model.openset.RULES), then the name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bbt.errors import ConfigError
from bbt.model.feature_sets import FEATURE_SETS
from bbt.model.openset import RULES

if TYPE_CHECKING:
    from bbt.config import SearchParams


def _svm(hp: dict[str, Any], seed: int) -> ClassifierMixin:
    # SVC(probability=True) is deprecated; calibrate one SVC on held-out folds instead.
    return CalibratedClassifierCV(SVC(**hp, random_state=seed), ensemble=False, cv=3)


def _random_forest(hp: dict[str, Any], seed: int) -> ClassifierMixin:
    return RandomForestClassifier(**hp, random_state=seed)


def _logistic_regression(hp: dict[str, Any], seed: int) -> ClassifierMixin:
    # The original system's liblinear, one-vs-rest: 10x faster than lbfgs on 4096 features, same scores.
    return OneVsRestClassifier(LogisticRegression(**hp, solver="liblinear", random_state=seed))


@dataclass(frozen=True)
class Family:
    """A model family: how to build it, the hyperparameters its grid may set, how simple a grid point is
    (smaller sorts first: stronger regularisation, fewer trees), and the packages loading it needs besides
    scikit-learn (the model's pinned requirements and bentofile.yaml; e.g. xgboost)."""

    build: Callable[[dict[str, Any], int], ClassifierMixin]
    hyperparameters: frozenset[str]
    simplicity: Callable[[dict[str, Any]], tuple]
    packages: tuple[str, ...] = ()


# The model families, simplest first. Adding a family is one entry here (and its grid in params.yaml):
# docs/models.md#adding-a-model-family.
FAMILIES: dict[str, Family] = {
    "logistic_regression": Family(_logistic_regression, frozenset({"C"}), lambda hp: (hp.get("C", 1.0),)),
    "svm": Family(_svm, frozenset({"C", "kernel", "gamma"}),
                  lambda hp: (hp.get("kernel", "rbf") != "linear", hp.get("C", 1.0))),
    "random_forest": Family(_random_forest, frozenset({"n_estimators", "max_depth", "min_samples_leaf"}),
                            lambda hp: (hp.get("n_estimators", 100), hp.get("max_depth") or math.inf,
                                        -hp.get("min_samples_leaf", 1))),
}


@dataclass(frozen=True)
class Head:
    """What is fitted on a feature set: one family at one grid point."""

    feature_set: str
    family: str
    hyperparameters: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        settings = ",".join(f"{k}={v}" for k, v in self.hyperparameters)
        return f"{self.feature_set}/{self.family}({settings})"

    def classifier(self, seed: int) -> ClassifierMixin:
        """A fresh, unfitted classifier with predict_proba."""
        return FAMILIES[self.family].build(dict(self.hyperparameters), seed)

    def head(self, seed: int) -> Pipeline:
        """Scaler and classifier: what is fitted on top of the (stateless) feature transformer."""
        return Pipeline([("scaler", StandardScaler()), ("clf", self.classifier(seed))])


@dataclass(frozen=True)
class Candidate:
    """A head and the open-set rule that decides when its answer is "unknown"."""

    head: Head
    rule: str

    @property
    def name(self) -> str:
        return f"{self.head.name}+{self.rule}"

    @property
    def simplicity(self) -> tuple:
        """The tie-break order of the module docstring (smaller is simpler)."""
        return (list(FEATURE_SETS).index(self.head.feature_set), list(FAMILIES).index(self.head.family),
                FAMILIES[self.head.family].simplicity(dict(self.head.hyperparameters)), list(RULES).index(self.rule),
                self.name)


def heads(params: SearchParams, feature_sets: tuple[str, ...]) -> list[Head]:
    """Every combination of feature set, family and grid point; unknown keys are a config error."""
    found = []
    for family in params.families:
        grid = params.grid.get(family) or {}
        allowed = FAMILIES[family].hyperparameters
        unknown = set(grid) - allowed
        if unknown:
            raise ConfigError(
                f"params.yaml: search.grid.{family} has unknown hyperparameter(s) {sorted(unknown)}; "
                f"valid ones are {sorted(allowed)}"
            )
        keys = sorted(grid)
        values = [v if isinstance(v, list) else [v] for v in (grid[k] for k in keys)]
        for feature_set in feature_sets:
            for combo in itertools.product(*values):
                found.append(Head(feature_set, family, tuple(zip(keys, combo))))
    return found


def candidates(params: SearchParams, feature_sets: tuple[str, ...]) -> list[Candidate]:
    """Every head with every open-set rule of search.open_set_rules."""
    return [Candidate(head, rule) for head in heads(params, feature_sets) for rule in params.open_set_rules]
