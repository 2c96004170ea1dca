"""The three model families: estimators, pipelines and their Optuna search spaces.

Every model is one sklearn :class:`Pipeline` (``preprocess`` =
:func:`healthpredict.modeling.features.build_preprocessor`, ``model`` = estimator). Tree
families grow in stages of :data:`STAGE` trees or iterations, so a search can prune them early.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from healthpredict.core.constants import FAMILIES
from healthpredict.modeling.features import build_preprocessor

if TYPE_CHECKING:
    import optuna

STAGE = 50  # trees or boosting iterations added between two pruning checks


def check_family(family: str) -> None:
    """Raise ``ValueError`` unless ``family`` is one of :data:`FAMILIES`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")


def make_estimator(
    family: str, params: dict[str, Any], *, seed: int = 42, n_jobs: int | None = None
) -> Any:
    """The unfitted classifier of ``family`` with hyperparameters ``params``.

    Args:
        family: ``logreg``, ``rf`` or ``hgb``.
        params: Hyperparameters of that family (names as in :func:`suggest_params`).
        seed: ``random_state`` of the estimator.
        n_jobs: Threads of a random forest (None = 1).
    """
    check_family(family)
    params = dict(params)
    if family == "logreg":
        return LogisticRegression(max_iter=2000, random_state=seed, **params)
    if family == "rf":
        return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **params)
    # Early stopping would carve its own random validation set out of the training rows.
    return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **params)


def make_pipeline(
    family: str, params: dict[str, Any], *, seed: int = 42, n_jobs: int | None = None
) -> Pipeline:
    """One sklearn pipeline from raw encounter fields to probabilities.

    ``preprocess`` is :func:`healthpredict.modeling.features.build_preprocessor` (numeric features
    standardised for logistic regression only), ``model`` the estimator.
    """
    return Pipeline(
        [
            ("preprocess", build_preprocessor(scale_numeric=family == "logreg")),
            ("model", make_estimator(family, params, seed=seed, n_jobs=n_jobs)),
        ]
    )


def suggest_params(trial: optuna.Trial, family: str) -> dict[str, Any]:
    """Sample the hyperparameters of ``family`` (Optuna names are prefixed ``<family>__``).

    The ranges suit ~10-100k encounters with an 11% positive rate: class weighting is a choice,
    regularisation spans several decades, trees are kept shallow enough to generalise.
    """
    check_family(family)

    def name(key: str) -> str:
        return f"{family}__{key}"

    if family == "logreg":
        return {
            "C": trial.suggest_float(name("C"), 1e-3, 10.0, log=True),
            "class_weight": trial.suggest_categorical(name("class_weight"), [None, "balanced"]),
        }
    if family == "rf":
        return {
            "n_estimators": trial.suggest_int(name("n_estimators"), 100, 400, step=STAGE),
            "max_depth": trial.suggest_categorical(name("max_depth"), [6, 10, 14, 20, None]),
            "min_samples_leaf": trial.suggest_int(name("min_samples_leaf"), 1, 64, log=True),
            "max_features": trial.suggest_categorical(
                name("max_features"), ["sqrt", 0.1, 0.25, 0.5]
            ),
            "class_weight": trial.suggest_categorical(
                name("class_weight"), [None, "balanced_subsample"]
            ),
        }
    return {
        "learning_rate": trial.suggest_float(name("learning_rate"), 0.01, 0.3, log=True),
        "max_iter": trial.suggest_int(name("max_iter"), 50, 500, step=STAGE),
        "max_leaf_nodes": trial.suggest_int(name("max_leaf_nodes"), 8, 64, log=True),
        "max_depth": trial.suggest_categorical(name("max_depth"), [None, 3, 5, 8]),
        "min_samples_leaf": trial.suggest_int(name("min_samples_leaf"), 10, 300, log=True),
        "l2_regularization": trial.suggest_float(name("l2_regularization"), 1e-4, 10.0, log=True),
        "max_features": trial.suggest_float(name("max_features"), 0.3, 1.0),
        "class_weight": trial.suggest_categorical(name("class_weight"), [None, "balanced"]),
    }


def split_trial_params(trial_params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Optuna trial params -> (family, estimator params without the family prefix)."""
    family = trial_params["family"]
    prefix = f"{family}__"
    return family, {k[len(prefix) :]: v for k, v in trial_params.items() if k.startswith(prefix)}


def trial_params_for(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """(family, estimator params) -> Optuna trial params, e.g. to enqueue a known-good trial."""
    check_family(family)
    return {"family": family, **{f"{family}__{k}": v for k, v in params.items()}}


def single_threaded():
    """Context limiting OpenMP/BLAS to one thread, for every fit and prediction of the package.

    Scale-out is by worker processes. Measured here: a HistGradientBoosting fit took 0.8 s on
    one thread and 13 s on two when the two cores were busy (OpenMP threads spin-wait).
    """
    return threadpool_limits(1)
