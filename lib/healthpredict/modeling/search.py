"""Hyperparameter search: Optuna TPE (seeded) over the model families, optionally in processes.

Trials maximise ROC AUC on the patient-grouped ``validation`` split, or with ``cv_folds`` >= 2
the mean over patient-grouped cross-validation folds of ``initial_train`` + ``validation``
(steadier on small data, ``cv_folds`` times the cost). Tree families are fitted in stages
(``warm_start``) and report each stage, so a :class:`optuna.pruners.MedianPruner` can stop
hopeless trials early.

Scale-out uses Optuna itself: ``n_workers > 1`` starts that many worker processes which call
``study.optimize`` on one study in shared storage (:mod:`healthpredict.modeling.studies`). Only
the calling process sees every finished trial (``on_trial``), so a caller that logs them never
has concurrent writers. Workers may also be separate programs (Airflow tasks, other machines):
each calls :func:`run_worker` (``healthpredict search-worker``) on a study made with
:func:`~healthpredict.modeling.studies.create_study`; every trial records the worker that ran
it (user attribute ``worker``).

Reproducibility: with ``n_workers=1`` and no timeout, the same data, settings, seed and study
name give the same trials, the same chosen parameters and the same metrics (the sampler and
every estimator's ``random_state`` are seeded). Several workers explore in a timing-dependent
order, so they are fast but not reproducible.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn import metrics as skm
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from healthpredict.data.schema import make_target
from healthpredict.modeling.features import build_preprocessor
from healthpredict.modeling.models import (
    STAGE,
    check_family,
    make_estimator,
    single_threaded,
    suggest_params,
)
from healthpredict.modeling.studies import (
    SearchSettings,
    create_study,
    load_study,
    make_pruner,
    make_sampler,
    worker_shares,
)

# No pruning before this many trees/iterations: tiny ensembles and slow learning rates look
# worse early than they end up, and the median rule would cut them for it.
PRUNE_FROM = 3 * STAGE
# Pruning compares a trial with others at the same step; the offset keeps the steps of random
# forests (trees) and boosting (iterations) apart so each family is judged against its own kind.
_STEP_OFFSET = {"rf": 0, "hgb": 100_000}

TrialCallback = Callable[[optuna.trial.FrozenTrial], None]


@dataclass
class _Fold:
    train: pd.DataFrame
    val: pd.DataFrame
    y_train: np.ndarray
    y_val: np.ndarray


def search_folds(
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    target: str,
    cv_folds: int = 0,
    seed: int = 42,
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """The (fit rows, scoring rows) pairs a trial is judged on.

    ``cv_folds`` < 2: the validation split itself. Otherwise ``cv_folds``-fold cross-validation
    over training and validation rows together, grouped by patient (a patient's encounters all
    fall in one fold) and shuffled by ``seed``: every row is scored once, which steadies the
    choice between close trials on small data. The test split is never touched either way.

    Raises:
        ValueError: A scoring part without both classes (ROC AUC is undefined).
    """
    if cv_folds < 2:
        pairs = [(train, val)]
    else:
        pool = pd.concat([train, val], ignore_index=True)
        splitter = GroupKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
        pairs = [
            (pool.iloc[fit_idx], pool.iloc[score_idx])
            for fit_idx, score_idx in splitter.split(pool, groups=pool["patient_nbr"])
        ]
    for i, (_, scored) in enumerate(pairs):
        if len(np.unique(make_target(scored, target))) < 2:
            what = "the validation split" if cv_folds < 2 else f"cross-validation fold {i + 1}"
            raise ValueError(
                f"{what} has only one class for target {target!r} ({len(scored)} rows): "
                "ROC AUC is undefined; prepare more data"
            )
    return pairs


class Objective:
    """Optuna objective: ROC AUC of one sampled pipeline on the search folds (their mean).

    The folds are :func:`search_folds`. The preprocessing depends only on whether numerics are
    scaled, not on the trial, so each variant is fitted on each fold's rows once per process and
    reused by every trial; the data itself is loaded once, before the search.
    """

    def __init__(
        self,
        train: pd.DataFrame,
        val: pd.DataFrame,
        *,
        target: str,
        families: Sequence[str],
        seed: int,
        cv_folds: int = 0,
        n_jobs: int | None = None,
        worker: int = 0,
    ) -> None:
        for family in families:
            check_family(family)
        self.folds = [
            _Fold(fit, scored, make_target(fit, target), make_target(scored, target))
            for fit, scored in search_folds(train, val, target=target, cv_folds=cv_folds, seed=seed)
        ]
        self.families = list(families)
        self.seed = seed
        self.n_jobs = n_jobs
        self.worker = worker
        self._cache: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {}

    @classmethod
    def for_search(
        cls,
        train: pd.DataFrame,
        val: pd.DataFrame,
        target: str,
        settings: SearchSettings,
        worker: int,
    ) -> Objective:
        """The objective of worker ``worker`` of a search run with ``settings``."""
        return cls(
            train,
            val,
            target=target,
            families=list(settings.families),
            seed=settings.seed,
            cv_folds=settings.cv_folds,
            worker=worker,
        )

    def matrices(self, family: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(fit matrix, scoring matrix) of every fold for ``family``'s preprocessing variant."""
        scale = family == "logreg"
        if scale not in self._cache:
            pairs = []
            for fold in self.folds:
                pre = build_preprocessor(scale_numeric=scale)
                # fit_transform, as Pipeline.fit: the target encoding of the fit rows is
                # cross-fitted, so trials see what the final pipeline's model will see.
                x_fit = pre.fit_transform(fold.train, fold.y_train)
                pairs.append((x_fit, pre.transform(fold.val)))
            self._cache[scale] = pairs
        return self._cache[scale]

    def _score(self, models: list[Any], data: list[tuple[np.ndarray, np.ndarray]]) -> float:
        aucs = [
            skm.roc_auc_score(fold.y_val, model.predict_proba(x_val)[:, 1])
            for fold, model, (_, x_val) in zip(self.folds, models, data, strict=True)
        ]
        return float(np.mean(aucs))

    def __call__(self, trial: optuna.Trial) -> float:
        """Fit the trial's model on every fold (tree families in stages); return the mean AUC."""
        trial.set_user_attr("worker", self.worker)
        family = trial.suggest_categorical("family", self.families)
        params = suggest_params(trial, family)
        data = self.matrices(family)
        started = time.perf_counter()
        models = [make_estimator(family, params, seed=self.seed, n_jobs=self.n_jobs) for _ in data]
        if family == "logreg":
            for model, fold, (x_fit, _) in zip(models, self.folds, data, strict=True):
                model.fit(x_fit, fold.y_train)
        else:
            total_key = "n_estimators" if family == "rf" else "max_iter"
            total = params[total_key]
            for size in [*range(STAGE, total, STAGE), total]:
                # warm_start adds trees/iterations; the result equals one fit with the full count.
                for model, fold, (x_fit, _) in zip(models, self.folds, data, strict=True):
                    model.set_params(warm_start=True, **{total_key: size})
                    with warnings.catch_warnings():
                        # sklearn warns about balanced class weights under warm_start in case
                        # the rows change between fits; here every stage sees the same rows.
                        warnings.filterwarnings("ignore", message="class_weight presets")
                        model.fit(x_fit, fold.y_train)
                score = self._score(models, data)
                trial.report(score, _STEP_OFFSET[family] + size)
                if PRUNE_FROM <= size < total and trial.should_prune():
                    trial.set_user_attr("fit_s", time.perf_counter() - started)
                    raise optuna.TrialPruned(f"{family} at {size}: search ROC AUC {score:.4f}")
        trial.set_user_attr("fit_s", time.perf_counter() - started)
        return self._score(models, data)


def run_worker(
    study_name: str,
    settings: SearchSettings,
    train: pd.DataFrame,
    val: pd.DataFrame,
    target: str,
    worker: int,
    n_trials: int,
) -> int:
    """One worker: load the shared study and run ``n_trials`` of it (any process, any machine).

    The study must exist (:func:`create_study`). Worker ``i`` samples with seed ``seed + i``, or
    all workers would start by proposing the same parameters; its trials carry the user
    attribute ``worker = i``. A failing trial is recorded as FAIL and the worker goes on.

    Worker ``i`` may be started again after it died (an Airflow task retry, a re-run command):
    the trials it left RUNNING are recorded as FAIL (worker indices are unique among live
    workers, so nobody else is running them) and only the rest of its share runs, so a retry
    neither loses trials of the budget nor adds any.

    Returns:
        The number of trials it ran.

    Raises:
        StudyNotFoundError: No such study in ``settings.study_storage``.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(
        study_name,
        settings.study_storage,
        # n_startup_trials follows the whole budget: the workers share the startup phase.
        sampler=make_sampler(settings.seed + worker, settings.n_trials),
        pruner=make_pruner(),
    )
    done = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("worker") != worker:
            continue
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            done += trial.state.is_finished()
    remaining = max(0, n_trials - done)
    if remaining == 0:
        return 0
    objective = Objective.for_search(train, val, target, settings, worker)
    with single_threaded():
        study.optimize(
            objective, n_trials=remaining, timeout=settings.timeout_s, catch=(Exception,)
        )
    return remaining


@dataclass(frozen=True)
class _WorkerJob:
    """What one worker process needs (pickled to it): the shared study and its share of trials."""

    study_name: str
    settings: SearchSettings
    train: pd.DataFrame
    val: pd.DataFrame
    target: str
    worker: int
    n_trials: int


def _optimize_worker(job: _WorkerJob) -> int:
    """Body of one pool process: :func:`run_worker` with the job's fields."""
    return run_worker(
        job.study_name, job.settings, job.train, job.val, job.target, job.worker, job.n_trials
    )


class _Progress:
    """Sees every finished trial once: advances the bar, then hands the trial on."""

    def __init__(
        self, study: optuna.Study, total: int, progress: bool, on_trial: TrialCallback | None
    ) -> None:
        self.study = study
        self.on_trial = on_trial
        self.seen: set[int] = set()
        self.bar = tqdm(
            total=total,
            desc="HPO trials",
            unit="trial",
            file=sys.stderr,
            disable=not progress,
            mininterval=1.0,
            dynamic_ncols=True,
        )

    def __call__(self, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        self.bar.update(1)
        complete = (t.value for t in self.study.trials if t.state.name == "COMPLETE")
        best = max(complete, default=None)
        if best is not None:
            self.bar.set_postfix(best_val_auc=f"{best:.4f}")
        if self.on_trial is not None:
            self.on_trial(trial)

    def poll(self) -> None:
        """Hand on every trial of the study that finished since the last look."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished():
                self(trial)


def search(
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    study_name: str,
    target: str = "<30",
    settings: SearchSettings | None = None,
    on_trial: TrialCallback | None = None,
) -> optuna.Study:
    """Run the hyperparameter search and return the finished study.

    Args:
        train: Raw training rows with ``readmitted``.
        val: Raw validation rows with ``readmitted`` (the objective's data).
        study_name: A fresh name (creating an existing study is an error, by design).
        target: Label definition.
        settings: Families, budget, workers, storage, seed, folds, warm start, progress bar.
        on_trial: Called in this process with every finished trial (e.g. MLflow logging).

    Raises:
        RuntimeError: No trial completed (the message gives the first failure).
    """
    settings = settings or SearchSettings()
    if settings.n_trials < 1 or settings.n_workers < 1:
        raise ValueError(
            f"n_trials and n_workers must be >= 1, got {settings.n_trials}, {settings.n_workers}"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Checked here, before any study or worker exists, so bad folds fail fast and clearly.
    search_folds(train, val, target=target, cv_folds=settings.cv_folds, seed=settings.seed)
    study = create_study(study_name, settings, exist_ok=False)
    progress = _Progress(study, settings.n_trials, settings.progress, on_trial)
    try:
        if settings.n_workers == 1:
            objective = Objective.for_search(train, val, target, settings, worker=0)
            with single_threaded():
                study.optimize(
                    objective,
                    n_trials=settings.n_trials,
                    timeout=settings.timeout_s,
                    catch=(Exception,),
                    callbacks=[lambda _study, trial: progress(trial)],
                )
        else:
            jobs = _worker_jobs(study_name, settings, train, val, target)
            _optimize_in_processes(jobs, progress)
    finally:
        progress.bar.close()
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        failed = [t for t in study.trials if t.state.name == "FAIL"]
        reason = failed[0].system_attrs.get("fail_reason", "?") if failed else "none finished"
        raise RuntimeError(f"no trial of study {study_name!r} completed; first failure: {reason}")
    return study


def _worker_jobs(
    study_name: str, settings: SearchSettings, train: pd.DataFrame, val: pd.DataFrame, target: str
) -> list[_WorkerJob]:
    shares = worker_shares(settings.n_trials, settings.n_workers)
    return [
        _WorkerJob(study_name, settings, train, val, target, worker=i, n_trials=share)
        for i, share in enumerate(shares)
    ]


def _optimize_in_processes(jobs: list[_WorkerJob], progress: _Progress) -> None:
    # spawn, not fork: the parent may hold MLflow/sqlite connections and OpenMP threads.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
        pending = {pool.submit(_optimize_worker, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            progress.poll()
            for fut in done:
                fut.result()  # a crashed worker ends the search with its error
    progress.poll()
