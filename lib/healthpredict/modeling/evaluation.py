"""How good a fitted model is: threshold, metrics, ROC AUC interval, permutation importance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, rankdata
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from healthpredict.data.schema import FEATURE_COLUMNS, ID_COLUMNS, make_target
from healthpredict.modeling.models import single_threaded

N_BINS = 10  # equal-count risk bins of the expected calibration error and reliability tables
# Fewer positives (or negatives) than this and a bootstrap resample misses the class: no
# interval, no subgroup figure.
MIN_CLASS_ROWS = 10


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
        ``tn fp fn tp``, ``n``, ``positive_rate`` and ``ece`` (expected calibration error).
        AUCs are NaN when one class is absent.
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
        "ece": float(expected_calibration_error(y_true, proba)),
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


def _sorted_by(key: np.ndarray, *arrays: np.ndarray, descending: bool = False) -> list:
    order = np.argsort(-key if descending else key, axis=-1, kind="stable")
    return [np.take_along_axis(a, order, axis=-1) for a in arrays]


def reliability_sums(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS, key: Any = None) -> tuple:
    """Sum of labels, sum of risks and rows of each equal-count bin of ``p`` (last axis).

    Rows sorted by risk (ties keep row order) are cut into runs whose sizes differ by at most one;
    ``key`` (e.g. :func:`healthpredict.modeling.card.risk_codes`) sorts like ``p``, faster.
    """
    ps, ys = _sorted_by(p if key is None else key, p, y)
    n = p.shape[-1]
    starts = (np.arange(min(n_bins, n)) * n) // min(n_bins, n)
    sizes = np.diff(np.append(starts, n))
    return np.add.reduceat(ys, starts, axis=-1), np.add.reduceat(ps, starts, axis=-1), sizes


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, key: Any = None, n_bins: int = N_BINS
) -> np.ndarray:
    """ECE = sum over equal-count bins of n_b / n * |observed_b - predicted_b| (last axis).

    Bins of (nearly) equal size, so sparse high-risk bins do not dominate; ``key`` sorts like
    ``p`` (e.g. integer risk codes, faster). A float for 1-D inputs, NaN for no rows.
    """
    p = np.asarray(p, float)
    if p.shape[-1] == 0:
        return math.nan
    sum_y, sum_p, _ = reliability_sums(np.asarray(y, float), p, n_bins, key)
    return np.abs(sum_y - sum_p).sum(axis=-1) / p.shape[-1]


def _roc_auc_along(y_true: np.ndarray, proba: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC of each resample along ``axis`` (Mann-Whitney form; ties count half, as sklearn)."""
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
    ±0.03 (0.642-0.702 around 0.673 on the real default split); the interval says so next to
    the figure. (NaN, NaN) when a class has fewer than ten rows: resamples would miss it.
    """
    y_true = np.asarray(y_true).astype(int)
    n_pos = int(y_true.sum())
    if min(n_pos, len(y_true) - n_pos) < MIN_CLASS_ROWS:
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


def score(pipeline: Any, frame: pd.DataFrame, target: str, threshold: float, prefix: str) -> dict:
    """Metrics of one model on one frame, keys prefixed (``test_roc_auc``, ...)."""
    with single_threaded():
        proba = pipeline.predict_proba(frame)[:, 1]
    metrics = classification_metrics(make_target(frame, target), proba, threshold)
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def uncalibrated_scores(pipeline: Any, frame: pd.DataFrame, target: str) -> dict[str, float]:
    """ROC AUC, Brier and ECE of a model's scores before calibration (``uncalibrated_*`` keys).

    Logged next to the calibrated model's metrics so a run shows what calibration changed.
    """
    got = score(pipeline, frame, target, 0.5, "uncalibrated_")
    return {f"uncalibrated_{k}": got[f"uncalibrated_{k}"] for k in ("roc_auc", "brier", "ece")}


@dataclass
class HeldOutEvaluation:
    """A model judged once on the held-out test split."""

    y_test: np.ndarray
    p_test: np.ndarray
    metrics: dict[str, float]  # classification_metrics plus roc_auc_ci95_low/high
    importance: pd.DataFrame  # permutation importance; empty when skipped


def evaluate_on_test(
    pipeline: Pipeline,
    test: pd.DataFrame,
    *,
    target: str,
    threshold: float,
    seed: int,
    importance_repeats: int = 3,
    importance_rows: int = 2000,
) -> HeldOutEvaluation:
    """Score ``pipeline`` on ``test`` at ``threshold``: metrics, AUC interval and importance.

    Args:
        pipeline: Fitted pipeline taking raw fields.
        test: Raw test rows with the label column.
        target: Label definition.
        threshold: Decision threshold (chosen on validation).
        seed: Seed of the bootstrap and of the importance shuffles.
        importance_repeats: Shuffles per raw column (0 skips the importance).
        importance_rows: Test rows sampled for the importance.
    """
    y_test = make_target(test, target)
    with single_threaded():
        p_test = pipeline.predict_proba(test)[:, 1]
        importance = (
            permutation_importance_raw(
                pipeline,
                test,
                y_test,
                n_repeats=importance_repeats,
                max_rows=importance_rows,
                seed=seed,
            )
            if importance_repeats > 0
            else pd.DataFrame(columns=["feature", "importance", "std"])
        )
    metrics = classification_metrics(y_test, p_test, threshold)
    ci_low, ci_high = roc_auc_interval(y_test, p_test, seed=seed)
    metrics.update(roc_auc_ci95_low=ci_low, roc_auc_ci95_high=ci_high)
    return HeldOutEvaluation(y_test, p_test, metrics, importance)
