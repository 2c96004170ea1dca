"""The recorded training run: search, refit, test and register, all in one MLflow run.

One MLflow parent run per call (experiment ``TRAINING_EXPERIMENT`` by default) holds the search
settings, the best parameters, validation and test metrics, trial table, importance and figures;
each Optuna trial is a nested run. Only this process writes to MLflow: the search hands every
finished trial (from any worker) to a :class:`~healthpredict.mlops.run_logging.TrialLogger`.

With ``study_name`` set, the search already ran elsewhere (the training DAG's mapped search
tasks, or ``healthpredict search-worker`` processes, filled that study in ``study_storage``):
:func:`train` loads it, logs its finished trials and goes on with the refit.

Reproducibility: with ``n_workers=1`` and no timeout, the same data, options and seed give the
same trials, the same chosen parameters and the same metrics; the study name is fresh per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd

from healthpredict.core.constants import CHAMPION
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import TrainParams
from healthpredict.mlops import registry, tracking
from healthpredict.mlops.model_card import LoggedCard, card_numbers, log_card
from healthpredict.mlops.run_logging import (
    TrialLogger,
    log_calibration,
    log_figures,
    log_metrics_prefixed,
)
from healthpredict.modeling.evaluation import (
    HeldOutEvaluation,
    evaluate_on_test,
    uncalibrated_scores,
)
from healthpredict.modeling.fitting import FittedModel, data_tags, fit_final, load_training_splits
from healthpredict.modeling.models import split_trial_params
from healthpredict.modeling.runtime.model_meta import ModelInfo
from healthpredict.modeling.search import search
from healthpredict.modeling.studies import (
    SearchSettings,
    StudyNotFoundError,
    check_study_settings,
    load_study,
    redact,
    trials_frame,
)


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train` runs, beyond the stage's parameters (:class:`TrainParams`).

    Attributes:
        importance_repeats: Shuffles per raw column for permutation importance (0 = skip).
        importance_rows: Test rows used for permutation importance.
        progress: Progress bar over trials on stderr.
    """

    importance_repeats: int = 3
    importance_rows: int = 2000
    progress: bool = True


# The stage parameters that are the search's own settings.
_SEARCH_FIELDS = {
    "families",
    "n_trials",
    "timeout_s",
    "n_workers",
    "study_storage",
    "seed",
    "cv_folds",
}


def search_settings(params: TrainParams, progress: bool = False) -> SearchSettings:
    """The search settings a stage's parameters stand for (also those of separate workers)."""
    return SearchSettings(**params.model_dump(include=_SEARCH_FIELDS), progress=progress)


def resolve_target(params: TrainParams, manifest: dict) -> str:
    """The label: the parameter, else the one the splits were prepared for, else the setting."""
    return params.target or manifest.get("split_params", {}).get("target") or get_settings().target


def load_searched_study(params: TrainParams) -> optuna.Study:
    """The study ``params.study_name`` filled by separate search workers, checked for use.

    Raises:
        StudyNotFoundError: The study is missing, or none of its trials completed.
        ValueError: It was made with other families, seed or folds than ``params``.
    """
    study_name, study_storage = params.study_name, params.study_storage
    study = load_study(study_name, study_storage)
    check_study_settings(study, search_settings(params))
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    if "COMPLETE" not in states:
        counts = {s: states.count(s) for s in sorted(set(states))} or "no trials"
        where = redact(study_storage) or "the default journal"
        raise StudyNotFoundError(
            f"Optuna study {study_name!r} in {where} has no completed trial ({counts}): "
            "did its search workers run?"
        )
    return study


@dataclass
class TrainResult:
    """Everything a notebook shows and records after :func:`train`."""

    data_source: str
    banner: str | None
    target: str
    best_family: str
    best_params: dict[str, Any]
    search_val_roc_auc: float
    val_metrics: dict[str, float]
    threshold: float
    test_metrics: dict[str, float]
    model_info: ModelInfo
    promoted: bool
    mlflow_run_id: str
    study_name: str
    trials: pd.DataFrame
    importance: pd.DataFrame
    y_test: np.ndarray
    p_test: np.ndarray
    wall_s: float
    card: LoggedCard
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def val_roc_auc(self) -> float:
        """Validation ROC AUC of the registered (refitted) model."""
        return self.val_metrics["roc_auc"]

    @property
    def model_version(self) -> str:
        """Registered version number."""
        return self.model_info.version


def _log_settings(
    params: TrainParams,
    target: str,
    frames: dict[str, pd.DataFrame],
    study: optuna.Study | None = None,
) -> None:
    # A study searched elsewhere: its real trial and worker counts, not the unused parameters.
    n_trials, n_workers = params.n_trials, params.n_workers
    if study is not None:
        trials = study.get_trials(deepcopy=False)
        n_trials = len(trials)
        n_workers = len({t.user_attrs.get("worker") for t in trials})
    mlflow.log_params(
        {
            "families": ",".join(params.families),
            "n_trials": n_trials,
            "search": "in-run" if study is None else "separate workers",
            "timeout_s": params.timeout_s,
            "n_workers": n_workers,
            "study_storage": redact(params.study_storage) or "journal(default)",
            "seed": params.seed,
            "cv_folds": params.cv_folds,
            "target": target,
            "target_recall": params.target_recall,
            "rows.initial_train": len(frames["initial_train"]),
            "rows.validation": len(frames["validation"]),
            "rows.test": len(frames["test"]),
        }
    )


def _log_outcome(
    study: optuna.Study, fitted: FittedModel, held_out: HeldOutEvaluation, trials: pd.DataFrame
) -> None:
    mlflow.log_params(
        {"best_family": fitted.family, **{f"best.{k}": v for k, v in fitted.params.items()}}
    )
    mlflow.log_metric("search_best_val_roc_auc", study.best_value)
    mlflow.log_metric("n_trials_complete", int((trials["state"] == "COMPLETE").sum()))
    mlflow.log_metric("n_trials_pruned", int((trials["state"] == "PRUNED").sum()))
    log_metrics_prefixed("val_", fitted.val_metrics)
    log_metrics_prefixed("test_", held_out.metrics)
    log_calibration(fitted)
    mlflow.log_table(trials, "trials.json")
    if len(held_out.importance):
        mlflow.log_table(held_out.importance, "permutation_importance.json")
    log_figures(held_out.y_test, held_out.p_test, fitted.threshold, held_out.importance)


def _register(
    fitted: FittedModel,
    test_metrics: dict[str, float],
    *,
    target: str,
    manifest: dict,
    input_example: pd.DataFrame,
    model_name: str | None,
) -> ModelInfo:
    """Register the model (alias challenger; champion when the name had none) and tag the run."""
    info = registry.log_model(
        fitted.pipeline,
        threshold=fitted.threshold,
        target=target,
        test_metrics=test_metrics,
        input_example=input_example,
        data_source=str(manifest.get("data_source", "unknown")),
        params={"family": fitted.family, **fitted.params},
        train_rows=len(input_example),  # fit_final fits on exactly these rows
        calibration=fitted.calibration.method,
        name=model_name,
    )
    mlflow.set_tags(
        {
            "model_name": info.name,
            "model_version": info.version,
            "promoted": str(CHAMPION in info.aliases).lower(),
        }
    )
    return info


def _fit_and_test(
    study: optuna.Study,
    frames: dict[str, pd.DataFrame],
    target: str,
    params: TrainParams,
    options: TrainOptions,
) -> tuple[FittedModel, HeldOutEvaluation]:
    """Refit the best trial on ``initial_train`` (threshold on validation); judge it on test."""
    family, best = split_trial_params(study.best_trial.params)
    fitted = fit_final(
        family,
        best,
        frames["initial_train"],
        frames["validation"],
        target=target,
        seed=params.seed,
        target_recall=params.target_recall,
    )
    held_out = evaluate_on_test(
        fitted.pipeline,
        frames["test"],
        target=target,
        threshold=fitted.threshold,
        seed=params.seed,
        importance_repeats=options.importance_repeats,
        importance_rows=options.importance_rows,
    )
    held_out.metrics.update(uncalibrated_scores(fitted.uncalibrated, frames["test"], target))
    return fitted, held_out


def train(params: TrainParams | None = None, options: TrainOptions | None = None) -> TrainResult:
    """Search (or load a study searched elsewhere), refit, evaluate on test and register.

    The model is registered through :func:`healthpredict.mlops.registry.log_model` (alias
    ``challenger``; ``champion`` too when the model had none).

    Args:
        params: The stage's parameters (data, search budget, target, threshold rule,
            experiment, model name), as the 02 notebook takes them; default as declared.
            With ``study_name``, the study in ``study_storage`` replaces the search.
        options: Importance and progress settings (default: :class:`TrainOptions` as is).

    Raises:
        StudyNotFoundError: ``study_name`` is missing from its storage or has no completed trial.
        ValueError: That study was made with other families, seed or folds.
    """
    params = params or TrainParams()
    options = options or TrainOptions()
    started = time.perf_counter()
    manifest, frames = load_training_splits(params.data_dir)
    target = resolve_target(params, manifest)
    # Checked before any MLflow run exists: a missing study leaves no half-made run behind.
    searched = load_searched_study(params) if params.study_name else None
    train_df = frames["initial_train"]
    tracking.setup_mlflow()
    exp_id = tracking.use_experiment(params.mlflow_experiment_name)
    with mlflow.start_run(run_name=f"hpo-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        run_id = parent.info.run_id
        study_name = params.study_name or f"healthpredict-{run_id}"
        mlflow.set_tags({**data_tags(manifest), "study_name": study_name, "stage": "train"})
        _log_settings(params, target, frames, searched)
        if searched is None:
            study = search(
                train_df,
                frames["validation"],
                study_name=study_name,
                target=target,
                settings=search_settings(params, options.progress),
                on_trial=TrialLogger(run_id, exp_id),
            )
        else:
            study = searched
            log_trial = TrialLogger(run_id, exp_id)
            for trial in study.get_trials(deepcopy=False):
                if trial.state.is_finished():  # a running one (a dead worker's) is not a result
                    log_trial(trial)
        fitted, held_out = _fit_and_test(study, frames, target, params, options)
        trials = trials_frame(study)
        _log_outcome(study, fitted, held_out, trials)
        numbers = card_numbers(
            fitted,
            frames["test"],
            target=target,
            target_recall=params.target_recall,
            data_source=str(manifest.get("data_source", "unknown")),
            train_rows=len(train_df),
            uncalibrated_brier=held_out.metrics["uncalibrated_brier"],
            seed=params.seed,
        )
        info = _register(
            fitted,
            held_out.metrics,
            target=target,
            manifest=manifest,
            input_example=train_df,
            model_name=params.model_name,
        )
        card = log_card(numbers, info, run_id)
        wall = time.perf_counter() - started
        mlflow.log_metric("wall_s", wall)
    return TrainResult(
        data_source=str(manifest.get("data_source", "unknown")),
        banner=manifest.get("banner"),
        target=target,
        best_family=fitted.family,
        best_params=fitted.params,
        search_val_roc_auc=float(study.best_value),
        val_metrics=fitted.val_metrics,
        threshold=fitted.threshold,
        test_metrics=held_out.metrics,
        model_info=info,
        promoted=CHAMPION in info.aliases,
        mlflow_run_id=run_id,
        study_name=study_name,
        trials=trials,
        importance=held_out.importance,
        y_test=held_out.y_test,
        p_test=held_out.p_test,
        wall_s=wall,
        card=card,
        manifest=manifest,
    )
