"""Model search, evaluation and registration: one ``train()`` for notebook, CLI and DAG.

The search is Optuna TPE (seeded) over three families of one sklearn :class:`Pipeline` each
(``preprocess`` = :func:`healthpredict.modeling.features.build_preprocessor`, ``model`` = estimator),
maximising ROC AUC on the patient-grouped ``validation`` split, or with ``cv_folds`` >= 2 the mean
over patient-grouped cross-validation folds of ``initial_train`` + ``validation`` (steadier on
small data, ``cv_folds`` times the cost). Tree families are fitted in
stages (``warm_start``) and report each stage, so a :class:`optuna.pruners.MedianPruner` can stop
hopeless trials early.

Scale-out uses Optuna itself: ``n_workers > 1`` starts that many worker processes which call
``study.optimize`` on one study held in shared storage. The default storage is a journal file
under ``<storage>/optuna/`` (no server); ``study_storage`` also takes ``sqlite:///...`` or a
PostgreSQL URL (``postgresql+psycopg2://user:pass@host/db``) so workers on several machines
can share one study. Only the parent process writes to MLflow: it polls the study and logs every
finished trial as a nested run, so the MLflow store never sees concurrent writers.

Reproducibility: with ``n_workers=1`` and no timeout, the same data, parameters and seed give
the same trials, the same chosen parameters and the same metrics (the sampler, every
estimator's ``random_state`` and the study name, fresh per MLflow run, are all fixed).
Several workers explore in a timing-dependent order, so they are fast but not reproducible.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from healthpredict.core import storage
from healthpredict.core.gitinfo import git_commit
from healthpredict.core.settings import get_settings
from healthpredict.data.schema import FEATURE_COLUMNS, ID_COLUMNS
from healthpredict.modeling.features import build_preprocessor, make_target

if TYPE_CHECKING:
    import optuna

    from healthpredict.mlops.registry import ModelInfo

FAMILIES = ("logreg", "rf", "hgb")
DEFAULT_EXPERIMENT = "HealthPredict_Training"
STAGE = 50  # trees or boosting iterations added between two pruning checks
# No pruning before this many trees/iterations: tiny ensembles and slow learning rates look
# worse early than they end up, and the median rule would cut them for it.
PRUNE_FROM = 3 * STAGE
# Pruning compares a trial with others at the same step; the offset keeps the steps of random
# forests (trees) and boosting (iterations) apart so each family is judged against its own kind.
_STEP_OFFSET = {"rf": 0, "hgb": 100_000}


# --------------------------------------------------------------------------- models


def _check_family(family: str) -> None:
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
    _check_family(family)
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
    _check_family(family)

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
    _check_family(family)
    return {"family": family, **{f"{family}__{k}": v for k, v in params.items()}}


# --------------------------------------------------------------------------- metrics


def choose_threshold(
    y_true: np.ndarray, proba: np.ndarray, target_recall: float | None = None
) -> float:
    """Decision threshold on validation predictions.

    Args:
        y_true: 0/1 labels.
        proba: Positive-class probabilities.
        target_recall: If given, the highest threshold that still reaches this recall;
            otherwise the threshold of maximal F1.
    """
    precision, recall, thresholds = skm.precision_recall_curve(y_true, proba)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if target_recall is not None:
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        reaching = np.flatnonzero(recall >= target_recall)
        return float(thresholds[reaching.max()]) if len(reaching) else float(thresholds.min())
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    return float(thresholds[int(np.argmax(f1))])


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float
) -> dict[str, float]:
    """Ranking, calibration and thresholded metrics of one scored split.

    Returns:
        ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``log_loss``, ``f1``,
        ``precision``, ``recall`` and ``accuracy`` at ``threshold``, the confusion counts
        ``tn fp fn tp``, ``n`` and ``positive_rate``. AUCs are NaN when one class is absent.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    pred = (proba >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "roc_auc": float(skm.roc_auc_score(y_true, proba)) if both else math.nan,
        "pr_auc": float(skm.average_precision_score(y_true, proba)) if both else math.nan,
        "brier": float(skm.brier_score_loss(y_true, proba)),
        "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "threshold": float(threshold),
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
        "n": int(len(y_true)),
        "positive_rate": float(y_true.mean()) if len(y_true) else math.nan,
    }


def _roc_auc_along(y_true: np.ndarray, proba: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC of each resample along ``axis`` (Mann-Whitney form; ties count half, as sklearn)."""
    from scipy.stats import rankdata

    y = np.asarray(y_true, dtype=float)
    ranks = rankdata(proba, axis=axis)
    n_pos = y.sum(axis=axis)
    n_neg = y.shape[axis] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((ranks * y).sum(axis=axis) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc_interval(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC of one scored split.

    A test split of a few thousand encounters with ~11 % positives measures ROC AUC to about
    ±0.03 (0.642-0.702 around 0.673 on the real default split); the interval says so next to the figure. (NaN, NaN) when a class has fewer than
    ten rows: resamples would miss it.
    """
    from scipy.stats import bootstrap

    y_true = np.asarray(y_true).astype(int)
    n_pos = int(y_true.sum())
    if min(n_pos, len(y_true) - n_pos) < 10:
        return math.nan, math.nan
    result = bootstrap(
        (y_true, np.asarray(proba, dtype=float)),
        _roc_auc_along,
        paired=True,
        vectorized=True,
        confidence_level=level,
        n_resamples=n_resamples,
        batch=100,  # bounds memory: 100 resamples of the split at a time
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


def permutation_importance_raw(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    y_true: np.ndarray,
    *,
    n_repeats: int = 3,
    max_rows: int = 2000,
    seed: int = 42,
    batch_rows: int = 50_000,
) -> pd.DataFrame:
    """Drop in test ROC AUC when one raw encounter column is shuffled.

    Raw columns (not one-hot dummies) are what a clinician recognises, and shuffling them goes
    through the whole pipeline, feature engineering included. IDs are skipped.

    Args:
        pipeline: Fitted pipeline taking raw fields.
        frame: Raw rows (e.g. the test split).
        y_true: Their 0/1 labels.
        n_repeats: Shuffles per column.
        max_rows: Rows sampled (seeded) to keep it fast.
        seed: Seed of the sampling and the shuffles.
        batch_rows: Rows scored per pipeline call (shuffled copies are stacked).

    Returns:
        Columns ``feature``, ``importance`` (mean AUC drop), ``std``; sorted, largest first.
    """
    rng = np.random.default_rng(seed)
    y_true = np.asarray(y_true)
    if len(frame) > max_rows:
        rows = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
        frame, y_true = frame.iloc[rows], y_true[rows]
    frame = frame.reset_index(drop=True)
    n = len(frame)
    base = skm.roc_auc_score(y_true, pipeline.predict_proba(frame)[:, 1])
    columns = [c for c in FEATURE_COLUMNS if c not in ID_COLUMNS and c in frame.columns]
    jobs = [(col, rng.permutation(n)) for col in columns for _ in range(n_repeats)]
    # The pipeline has a fixed cost per call (pandas feature engineering), so the shuffled
    # copies are scored in large stacked batches rather than one call per shuffle.
    per_batch = max(1, batch_rows // n)
    drops: dict[str, list[float]] = {col: [] for col in columns}
    for start in range(0, len(jobs), per_batch):
        batch = jobs[start : start + per_batch]
        copies = []
        for col, order in batch:
            shuffled = frame.copy()
            shuffled[col] = frame[col].to_numpy()[order]
            copies.append(shuffled)
        proba = pipeline.predict_proba(pd.concat(copies, ignore_index=True))[:, 1]
        for k, (col, _) in enumerate(batch):
            drops[col].append(base - skm.roc_auc_score(y_true, proba[k * n : (k + 1) * n]))
    out = [
        {"feature": col, "importance": float(np.mean(d)), "std": float(np.std(d))}
        for col, d in drops.items()
    ]
    return pd.DataFrame(out).sort_values("importance", ascending=False, ignore_index=True)


# --------------------------------------------------------------------------- search


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
    from sklearn.model_selection import GroupKFold

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
    ) -> None:
        for family in families:
            _check_family(family)
        self.folds = [
            _Fold(fit, scored, make_target(fit, target), make_target(scored, target))
            for fit, scored in search_folds(train, val, target=target, cv_folds=cv_folds, seed=seed)
        ]
        self.families = list(families)
        self.seed = seed
        self.n_jobs = n_jobs
        self._cache: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {}

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
        import optuna

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


def default_study_storage() -> str:
    """Journal file for studies: ``<storage>/optuna/journal.log`` (local cache dir under S3)."""
    root = get_settings().storage
    base = Path(get_settings().cache_dir) if storage.is_s3(root) else Path(root)
    return str((base / "optuna" / "journal.log").expanduser().resolve())


def open_study_storage(spec: str | None = None) -> Any:
    """Optuna storage for ``spec``: a journal file path (default) or a database URL.

    Args:
        spec: None (journal file, see :func:`default_study_storage`), a path (journal file), or
            an SQLAlchemy URL such as ``sqlite:///var/optuna.db`` or
            ``postgresql+psycopg2://user:pass@host:5432/optuna`` (several machines).
    """
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    spec = spec or default_study_storage()
    if "://" in spec:
        if spec.startswith("sqlite:///"):
            Path(spec[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(
                parents=True, exist_ok=True
            )
        return RDBStorage(spec)
    path = Path(spec).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def redact(url: str | None) -> str | None:
    """A storage URL without its password, fit for logs and MLflow params."""
    if not url or "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _sampler(seed: int, n_trials: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group model the conditional per-family spaces jointly.
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(10, max(1, n_trials // 3)),
            multivariate=True,
            group=True,
        )


def _pruner() -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


def single_threaded():
    """Context limiting OpenMP/BLAS to one thread.

    Scale-out is by worker processes. Measured here: a HistGradientBoosting fit took 0.8 s on
    one thread and 13 s on two when the two cores were busy (OpenMP threads spin-wait).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _optimize_worker(
    study_name: str,
    storage_spec: str | None,
    train: pd.DataFrame,
    val: pd.DataFrame,
    target: str,
    families: list[str],
    n_trials: int,
    timeout_s: float | None,
    seed: int,
    worker: int,
    n_workers: int,
    cv_folds: int,
) -> int:
    """Body of one worker process: load the shared study and optimise ``n_trials`` of it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=open_study_storage(storage_spec),
        # Each worker its own seed, or all would start by proposing the same parameters.
        sampler=_sampler(seed + worker, n_trials * n_workers),
        pruner=_pruner(),
    )
    objective = Objective(
        train, val, target=target, families=families, seed=seed, cv_folds=cv_folds
    )
    with single_threaded():
        study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=(Exception,))
    return n_trials


_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def search(
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    target: str = "<30",
    families: Sequence[str] = FAMILIES,
    n_trials: int = 30,
    timeout_s: float | None = None,
    n_workers: int = 1,
    study_storage: str | None = None,
    study_name: str,
    seed: int = 42,
    cv_folds: int = 0,
    enqueue: Iterable[dict[str, Any]] = (),
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run the hyperparameter search and return the finished study.

    Args:
        train: Raw training rows with ``readmitted``.
        val: Raw validation rows with ``readmitted`` (the objective's data).
        target: Label definition.
        families: Model families to search over.
        n_trials: Trials in all (split evenly over the workers).
        timeout_s: Stop starting new trials after this many seconds (per worker).
        n_workers: Worker processes sharing the study (1 = in this process, reproducible).
        study_storage: Optuna storage (see :func:`open_study_storage`).
        study_name: A fresh name (creating an existing study is an error, by design).
        seed: Sampler and estimator seed.
        cv_folds: Score trials by patient-grouped cross-validation over ``train`` + ``val``
            with this many folds (< 2: on ``val``); see :func:`search_folds`.
        enqueue: Trial params (see :func:`trial_params_for`) to evaluate first (warm start).
        on_trial: Called in this process with every finished trial (MLflow logging).
        progress: Show a tqdm bar over trials on stderr.

    Raises:
        RuntimeError: No trial completed (the message gives the first failure).
    """
    import optuna
    from tqdm import tqdm

    if n_trials < 1 or n_workers < 1:
        raise ValueError(f"n_trials and n_workers must be >= 1, got {n_trials}, {n_workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    families = list(families)
    # Checked here, before any study or worker exists, so bad folds fail fast and clearly.
    search_folds(train, val, target=target, cv_folds=cv_folds, seed=seed)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_study_storage(study_storage),
        direction="maximize",
        sampler=_sampler(seed, n_trials),
        pruner=_pruner(),
        load_if_exists=False,
    )
    study.set_user_attr("families", families)
    study.set_user_attr("seed", seed)
    study.set_user_attr("cv_folds", cv_folds)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    seen: set[int] = set()
    bar = tqdm(
        total=n_trials,
        desc="HPO trials",
        unit="trial",
        file=sys.stderr,
        disable=not progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )

    def finished(trial: optuna.trial.FrozenTrial) -> None:
        if trial.number in seen:
            return
        seen.add(trial.number)
        bar.update(1)
        best = max((t.value for t in study.trials if t.state.name == "COMPLETE"), default=None)
        if best is not None:
            bar.set_postfix(best_val_auc=f"{best:.4f}")
        if on_trial is not None:
            on_trial(trial)

    try:
        if n_workers == 1:
            objective = Objective(
                train, val, target=target, families=families, seed=seed, cv_folds=cv_folds
            )
            with single_threaded():
                study.optimize(
                    objective,
                    n_trials=n_trials,
                    timeout=timeout_s,
                    catch=(Exception,),
                    callbacks=[lambda _study, trial: finished(trial)],
                )
        else:
            _optimize_in_processes(
                study,
                finished,
                train,
                val,
                target=target,
                families=families,
                n_trials=n_trials,
                timeout_s=timeout_s,
                n_workers=n_workers,
                study_storage=study_storage,
                seed=seed,
                cv_folds=cv_folds,
            )
    finally:
        bar.close()
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        failed = [t for t in study.trials if t.state.name == "FAIL"]
        reason = failed[0].system_attrs.get("fail_reason", "?") if failed else "none finished"
        raise RuntimeError(f"no trial of study {study_name!r} completed; first failure: {reason}")
    return study


def _optimize_in_processes(
    study,
    finished,
    train,
    val,
    *,
    target,
    families,
    n_trials,
    timeout_s,
    n_workers,
    study_storage,
    seed,
    cv_folds,
) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    shares = [n_trials // n_workers + (i < n_trials % n_workers) for i in range(n_workers)]
    # spawn, not fork: the parent may hold MLflow/sqlite connections and OpenMP threads.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                _optimize_worker,
                study.study_name,
                study_storage,
                train,
                val,
                target,
                families,
                share,
                timeout_s,
                seed,
                i,
                n_workers,
                cv_folds,
            )
            for i, share in enumerate(shares)
            if share > 0
        ]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            _poll(study, finished)
            for fut in done:
                fut.result()  # a crashed worker ends the search with its error
    _poll(study, finished)


def _poll(study, finished) -> None:
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name in _FINISHED:
            finished(trial)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, family, value (val ROC AUC), seconds, parameters."""
    rows = []
    for t in study.trials:
        family = t.params.get("family")
        _, params = split_trial_params(t.params) if family else (None, {})
        duration = t.duration.total_seconds() if t.duration is not None else math.nan
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "family": family,
                "val_roc_auc": t.value,
                "seconds": round(duration, 2),
                "params": json.dumps(params, default=str),
            }
        )
    return pd.DataFrame(
        rows, columns=["trial", "state", "family", "val_roc_auc", "seconds", "params"]
    )


# --------------------------------------------------------------------------- MLflow


class TrialLogger:
    """Logs finished Optuna trials as nested MLflow runs under a parent run (one batch each)."""

    def __init__(self, parent_run_id: str, experiment_id: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id

    def __call__(self, trial: optuna.trial.FrozenTrial) -> None:
        """Create the trial's child run with its params, value, staged values and state."""
        from mlflow.entities import Metric, Param, RunTag

        start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "optuna.trial": str(trial.number),
                "optuna.state": trial.state.name,
            },
            run_name=f"trial-{trial.number:03d}",
        )
        stamp = end or int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in sorted(trial.params.items())]
        metrics = [
            Metric("val_roc_auc_staged", float(v), stamp, int(step))
            for step, v in sorted(trial.intermediate_values.items())
        ]
        if trial.value is not None:
            metrics.append(Metric("val_roc_auc", float(trial.value), stamp, 0))
        if trial.duration is not None:
            metrics.append(Metric("duration_s", trial.duration.total_seconds(), stamp, 0))
        tags = [RunTag("family", str(trial.params.get("family")))]
        if trial.state.name == "FAIL":
            tags.append(
                RunTag("fail_reason", str(trial.system_attrs.get("fail_reason", ""))[:4000])
            )
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(trial.state.name, "FAILED")
        self.client.set_terminated(run.info.run_id, status=status, end_time=end)


def log_metrics_prefixed(prefix: str, values: dict[str, float]) -> None:
    """Log the finite values of ``values`` as MLflow metrics named ``<prefix><key>``."""
    import mlflow

    mlflow.log_metrics(
        {
            f"{prefix}{k}": float(v)
            for k, v in values.items()
            if v is not None and math.isfinite(float(v))
        }
    )


def _log_figures(
    y_true: np.ndarray, proba: np.ndarray, threshold: float, importance: pd.DataFrame | None
) -> None:
    import mlflow

    from healthpredict.modeling import plots

    figures = {
        "roc_pr.png": plots.roc_pr_curves(y_true, proba),
        "calibration.png": plots.calibration(y_true, proba),
        "confusion.png": plots.confusion(y_true, proba, threshold),
    }
    if importance is not None and len(importance):
        figures["importance.png"] = plots.importance_bar(importance)
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"figures/{name}")


# --------------------------------------------------------------------------- final model


@dataclass
class FittedModel:
    """A pipeline refitted on the training rows, its threshold and its scores."""

    family: str
    params: dict[str, Any]
    pipeline: Pipeline
    threshold: float
    val_metrics: dict[str, float]
    val_proba: np.ndarray


def fit_final(
    family: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    target: str,
    seed: int,
    target_recall: float | None = None,
) -> FittedModel:
    """Refit ``family``/``params`` on ``train``; choose the threshold on ``val``.

    The threshold comes from a model that never saw the validation rows, so it is honest; the
    validation metrics are reported at that threshold.
    """
    pipeline = make_pipeline(family, params, seed=seed)
    with single_threaded():
        pipeline.fit(train, make_target(train, target))
        y_val = make_target(val, target)
        proba = pipeline.predict_proba(val)[:, 1]
    threshold = choose_threshold(y_val, proba, target_recall)
    return FittedModel(
        family,
        dict(params),
        pipeline,
        threshold,
        classification_metrics(y_val, proba, threshold),
        proba,
    )


def load_training_splits(data_dir: str | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Manifest and the raw ``initial_train``, ``validation`` and ``test`` frames."""
    from healthpredict.data.split import drop_unreadmittable, load_split, read_manifest

    manifest = read_manifest(data_dir)
    frames = {
        name: drop_unreadmittable(load_split(name, data_dir)).reset_index(drop=True)
        for name in ("initial_train", "validation", "test")
    }
    return manifest, frames


def data_tags(manifest: dict) -> dict[str, str]:
    """MLflow tags naming the data: source, its sha256, split hashes, git commit."""
    tags = {
        "data_source": str(manifest.get("data_source", "unknown")),
        "data_sha256": str(manifest.get("source_csv_sha256", "")),
        "data_origin": str(manifest.get("source", "")),
        "schema_hash": str(manifest.get("schema_hash", "")),
        "git_commit": git_commit(),
    }
    for name, info in manifest.get("splits", {}).items():
        tags[f"data_sha256.{name}"] = str(info.get("sha256", ""))
    return tags


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
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def val_roc_auc(self) -> float:
        """Validation ROC AUC of the registered (refitted) model."""
        return self.val_metrics["roc_auc"]

    @property
    def model_version(self) -> str:
        """Registered version number."""
        return self.model_info.version


def train(
    data_dir: str | None = None,
    *,
    families: Sequence[str] = FAMILIES,
    n_trials: int = 30,
    timeout_s: float | None = None,
    n_workers: int = 1,
    study_storage: str | None = None,
    seed: int = 42,
    cv_folds: int = 0,
    target: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    target_recall: float | None = None,
    model_name: str | None = None,
    importance_repeats: int = 3,
    importance_rows: int = 2000,
    progress: bool = True,
) -> TrainResult:
    """Search, refit, evaluate on the held-out test split and register the model.

    One MLflow parent run per call (experiment ``experiment_name``) holds the search settings,
    the best parameters, validation and test metrics, trial table, importance and figures; each
    trial is a nested run. The model is registered through :func:`healthpredict.mlops.registry.log_model`
    (alias ``challenger``; ``champion`` too when the model had none).

    Args:
        data_dir: Prepared data folder or URI (default ``<storage>/processed_data``).
        families: Model families to search (``logreg``, ``rf``, ``hgb``).
        n_trials: Optuna trials in all.
        timeout_s: Stop starting trials after this many seconds (None: no limit).
        n_workers: Worker processes on one shared study (1 is reproducible).
        study_storage: Optuna storage: None (journal file under ``<storage>/optuna``), a path,
            ``sqlite:///...`` or a PostgreSQL URL.
        seed: Seed of sampler and estimators.
        cv_folds: Judge trials by patient-grouped cross-validation over ``initial_train`` +
            ``validation`` with this many folds (0: on ``validation``); see :func:`search_folds`.
        target: ``<30`` or ``any`` (default: the target the data was prepared for).
        experiment_name: MLflow experiment.
        target_recall: Choose the threshold reaching this validation recall (default: max F1).
        model_name: Registered model name (default ``settings.model_name``).
        importance_repeats: Shuffles per raw column for permutation importance (0 = skip).
        importance_rows: Test rows used for permutation importance.
        progress: Progress bar over trials on stderr.
    """
    import mlflow

    from healthpredict.mlops import registry, tracking

    started = time.perf_counter()
    manifest, frames = load_training_splits(data_dir)
    target = target or manifest.get("split_params", {}).get("target") or get_settings().target
    train_df, val_df, test_df = frames["initial_train"], frames["validation"], frames["test"]
    tracking.setup_mlflow()
    exp_id = tracking.use_experiment(experiment_name)
    run_name = f"hpo-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(run_name=run_name) as parent:
        run_id = parent.info.run_id
        study_name = f"healthpredict-{run_id}"
        mlflow.set_tags({**data_tags(manifest), "study_name": study_name, "stage": "train"})
        mlflow.log_params(
            {
                "families": ",".join(families),
                "n_trials": n_trials,
                "timeout_s": timeout_s,
                "n_workers": n_workers,
                "study_storage": redact(study_storage) or "journal(default)",
                "seed": seed,
                "cv_folds": cv_folds,
                "target": target,
                "target_recall": target_recall,
                "rows.initial_train": len(train_df),
                "rows.validation": len(val_df),
                "rows.test": len(test_df),
            }
        )
        study = search(
            train_df,
            val_df,
            target=target,
            families=families,
            n_trials=n_trials,
            timeout_s=timeout_s,
            n_workers=n_workers,
            study_storage=study_storage,
            study_name=study_name,
            seed=seed,
            cv_folds=cv_folds,
            on_trial=TrialLogger(run_id, exp_id),
            progress=progress,
        )
        family, params = split_trial_params(study.best_trial.params)
        fitted = fit_final(
            family, params, train_df, val_df, target=target, seed=seed, target_recall=target_recall
        )
        y_test = make_target(test_df, target)
        with single_threaded():
            p_test = fitted.pipeline.predict_proba(test_df)[:, 1]
            importance = (
                permutation_importance_raw(
                    fitted.pipeline,
                    test_df,
                    y_test,
                    n_repeats=importance_repeats,
                    max_rows=importance_rows,
                    seed=seed,
                )
                if importance_repeats > 0
                else pd.DataFrame(columns=["feature", "importance", "std"])
            )
        test_metrics = classification_metrics(y_test, p_test, fitted.threshold)
        ci_low, ci_high = roc_auc_interval(y_test, p_test, seed=seed)
        test_metrics.update(roc_auc_ci95_low=ci_low, roc_auc_ci95_high=ci_high)
        trials = trials_frame(study)
        mlflow.log_params({"best_family": family, **{f"best.{k}": v for k, v in params.items()}})
        mlflow.log_metric("search_best_val_roc_auc", study.best_value)
        mlflow.log_metric("n_trials_complete", int((trials["state"] == "COMPLETE").sum()))
        mlflow.log_metric("n_trials_pruned", int((trials["state"] == "PRUNED").sum()))
        log_metrics_prefixed("val_", fitted.val_metrics)
        log_metrics_prefixed("test_", test_metrics)
        mlflow.log_table(trials, "trials.json")
        if len(importance):
            mlflow.log_table(importance, "permutation_importance.json")
        _log_figures(y_test, p_test, fitted.threshold, importance)
        info = registry.log_model(
            fitted.pipeline,
            threshold=fitted.threshold,
            target=target,
            test_metrics=test_metrics,
            input_example=train_df,
            data_source=str(manifest.get("data_source", "unknown")),
            params={"family": family, **params},
            name=model_name,
        )
        promoted = registry.CHAMPION in info.aliases
        mlflow.set_tags(
            {
                "model_name": info.name,
                "model_version": info.version,
                "promoted": str(promoted).lower(),
            }
        )
        wall = time.perf_counter() - started
        mlflow.log_metric("wall_s", wall)
    return TrainResult(
        data_source=str(manifest.get("data_source", "unknown")),
        banner=manifest.get("banner"),
        target=target,
        best_family=family,
        best_params=params,
        search_val_roc_auc=float(study.best_value),
        val_metrics=fitted.val_metrics,
        threshold=fitted.threshold,
        test_metrics=test_metrics,
        model_info=info,
        promoted=promoted,
        mlflow_run_id=run_id,
        study_name=study_name,
        trials=trials,
        importance=importance,
        y_test=y_test,
        p_test=p_test,
        wall_s=wall,
        manifest=manifest,
    )
