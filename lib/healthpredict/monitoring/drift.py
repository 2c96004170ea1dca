"""Drift monitoring of the production model: data drift, prediction drift and performance.

A new batch of encounters is compared with the data the production model was built on:

* **data drift**: every engineered model input (``NUMERIC_FEATURES`` + ``CATEGORICAL_FEATURES``,
  the interpretable columns, not the one-hot matrix) against the reference: normed Wasserstein
  distance for numeric columns, Jensen-Shannon distance for categorical ones. These are the
  methods Evidently picks for references above 1,000 rows; here they are fixed per column so
  the method never changes with the batch;
* **prediction drift**: the normed Wasserstein distance between the model's predicted
  probabilities on the batch and on held-out reference rows, plus the predicted positive rate
  at the model's threshold;
* **performance**, when the batch carries labels: ROC AUC, precision, recall and F1 at the
  model's threshold, against the same held-out rows.

Distance thresholds are calibrated, not fixed. A distance between two samples is never zero: its
size under "no drift" shrinks like ``sqrt(1/n_batch + 1/n_reference)``, so Evidently's default
0.1 flags many columns of a small batch that did not drift. :func:`calibrate` measures the
reference's own batch-to-batch variation instead: it draws ``n_null`` random batches of the
monitored size from the reference (whole patients: a new batch brings new patients), scores
each against the rest of the reference (vectorised, the same formulas Evidently uses; numeric
tails capped at reference quantiles so one extreme patient cannot decide), and
:meth:`Calibration.thresholds` turns those null scores into per-column thresholds, a
prediction-drift threshold and a performance tolerance such that the whole decision has a known
false-alarm rate. The
calibration is computed once per reference, held-out rows, model version and batch size and
cached under ``<storage>/drift_cache/``; the Evidently reports get the calibrated thresholds, so
the HTML shows what the decision used.

``import evidently`` costs seconds, so it happens inside the functions that build reports.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings
from healthpredict.data.schema import TARGET, RawSchemaError, schema_hash, validate_raw
from healthpredict.data.uci import read_raw_csv
from healthpredict.modeling.features import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    clean_data,
    engineer_features,
    make_target,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

DRIFT_DETECTED = "DRIFT_DETECTED"
NO_DRIFT = "NO_DRIFT"
DEFAULT_EXPERIMENT = "HealthPredict_Monitoring"
NUMERIC_METHOD = "wasserstein"
CATEGORICAL_METHOD = "jensenshannon"
EVIDENTLY_DEFAULT_THRESHOLD = 0.1
DRIFT_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
METHODS: dict[str, str] = {
    **{c: NUMERIC_METHOD for c in NUMERIC_FEATURES},
    **{c: CATEGORICAL_METHOD for c in CATEGORICAL_FEATURES},
}
PROBA_COLUMN = "prediction_proba"
LABEL_COLUMN = "prediction"
TARGET_COLUMN = "target"
REPORT_NAMES = ("data_drift", "prediction_drift", "performance")
CACHE_FOLDER = "drift_cache"
CALIBRATION_VERSION = 2  # bump when the null procedure changes: old caches are then ignored
GROUP_COLUMN = "patient_nbr"

# Per-column scale of the null scores: a well-estimated quantile; the family-wise cut is found
# on the maximum of the scaled scores (single-step max-T), so extreme quantiles per column,
# which 1,000 null batches cannot estimate, are never needed.
_SCALE_QUANTILE = 0.95
# A column that never varies in the reference has null scores of 0; any change is then drift.
_MIN_SCALE = 1e-3
_WASSERSTEIN_MIN_NORM = 0.001  # Evidently's floor of the reference std
# Numeric columns are capped at these reference quantiles before scoring: in the real data one
# patient with three encounters at 25 emergency visits (reference std 0.45) moves the normed
# Wasserstein distance of any batch holding him past the threshold on his own.
TAIL_QUANTILE = 0.001
_CHUNK = 100  # null batches scored at once: bounds memory for columns with many values


# Fewer rows than this and no drift statistic says anything: a distance between a handful of
# rows and the reference is all noise, and the Evidently reports cannot be built on them.
MIN_BATCH_ROWS = 30


class ModelSchemaError(ValueError):
    """The production model was trained on another raw schema than the current one."""


class BatchTooSmallError(ValueError):
    """The batch has fewer rows than the drift monitor needs (:data:`MIN_BATCH_ROWS`)."""


# --- the decision ----------------------------------------------------------------------------


def decide(
    drifted_share: float,
    share_threshold: float,
    prediction_drift: bool,
    performance_drop: float | None,
    performance_tolerance: float | None,
) -> tuple[str, list[str]]:
    """Decide whether a batch drifted, from the three monitored signals.

    Args:
        drifted_share: Share of monitored columns whose drift score reached their threshold.
        share_threshold: Share of drifted columns that means data drift, in (0, 1].
        prediction_drift: Whether the predicted probabilities drifted significantly.
        performance_drop: Reference ROC AUC minus batch ROC AUC; None (or NaN) when the batch
            has no labels or its AUC is undefined.
        performance_tolerance: Largest drop that is still no drift; None ignores performance.

    Returns:
        ``("DRIFT_DETECTED", reasons)`` when the drifted share reaches its threshold, the
        predictions drifted, or the performance dropped by more than the tolerance; else
        ``("NO_DRIFT", [])``. Each reason is one sentence naming the signal and its numbers.

    Raises:
        ValueError: A share outside [0, 1], a share threshold outside (0, 1] or a negative
            tolerance.
    """
    if not (math.isfinite(drifted_share) and 0.0 <= drifted_share <= 1.0):
        raise ValueError(f"drifted_share must be in [0, 1], got {drifted_share}")
    if not (math.isfinite(share_threshold) and 0.0 < share_threshold <= 1.0):
        raise ValueError(f"share_threshold must be in (0, 1], got {share_threshold}")
    if performance_tolerance is not None and not performance_tolerance >= 0:
        raise ValueError(f"performance_tolerance must be >= 0, got {performance_tolerance}")
    reasons: list[str] = []
    # The tiny slack makes k/C computed in two places compare as equal.
    if drifted_share >= share_threshold - 1e-12:
        reasons.append(
            f"data drift: {drifted_share:.1%} of the monitored columns drifted "
            f"(threshold {share_threshold:.1%})"
        )
    if prediction_drift:
        reasons.append("prediction drift: the model's predicted probabilities drifted")
    measurable = performance_drop is not None and math.isfinite(performance_drop)
    if (
        measurable
        and performance_tolerance is not None
        and performance_drop > performance_tolerance
    ):
        reasons.append(
            f"performance: ROC AUC dropped by {performance_drop:.3f} "
            f"(tolerance {performance_tolerance:.3f})"
        )
    return (DRIFT_DETECTED if reasons else NO_DRIFT), reasons


# --- distances, computed from value counts ---------------------------------------------------


def _wasserstein_counts(ref: np.ndarray, cur: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normed Wasserstein-1 distance from counts over a sorted support (last axis).

    Matches Evidently's ``wasserstein``: ``scipy.stats.wasserstein_distance(ref, cur)`` divided
    by ``max(std(ref), 0.001)``.
    """
    ref = np.asarray(ref, dtype=float)
    cur = np.asarray(cur, dtype=float)
    n_ref = ref.sum(-1, keepdims=True)
    n_cur = cur.sum(-1, keepdims=True)
    gap = np.abs(np.cumsum(ref, -1) / n_ref - np.cumsum(cur, -1) / n_cur)[..., :-1]
    dist = (gap * np.diff(values)).sum(-1)
    mean = (ref * values).sum(-1, keepdims=True) / n_ref
    std = np.sqrt((ref * (values - mean) ** 2).sum(-1) / n_ref[..., 0])
    return dist / np.maximum(std, _WASSERSTEIN_MIN_NORM)


def _jensen_shannon_counts(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (natural log) from category counts, as scipy/Evidently compute it."""
    p = np.asarray(ref, dtype=float)
    q = np.asarray(cur, dtype=float)
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    return np.sqrt(np.maximum((kl_p + kl_q) / 2, 0.0))


def _valid(values: Any) -> pd.Series:
    s = pd.Series(values)
    if pd.api.types.is_numeric_dtype(s):
        s = s.replace([np.inf, -np.inf], np.nan)
    return s.dropna()


def column_distance(reference: Any, current: Any, method: str) -> float:
    """Drift score of one column, as Evidently computes it (missing values are dropped).

    Args:
        reference: Reference values (array-like).
        current: Current values (array-like).
        method: ``"wasserstein"`` (normed) or ``"jensenshannon"``.

    Returns:
        The distance; NaN when either side has no value.
    """
    ref, cur = _valid(reference), _valid(current)
    if not len(ref) or not len(cur):
        return math.nan
    if method == NUMERIC_METHOD:
        both = np.concatenate([ref.to_numpy(float), cur.to_numpy(float)])
        values, codes = np.unique(both, return_inverse=True)
        k = len(values)
        rc = np.bincount(codes[: len(ref)], minlength=k)
        cc = np.bincount(codes[len(ref) :], minlength=k)
        return float(_wasserstein_counts(rc, cc, values))
    if method == CATEGORICAL_METHOD:
        codes, _ = pd.factorize(pd.concat([ref, cur], ignore_index=True), sort=True)
        k = int(codes.max()) + 1
        rc = np.bincount(codes[: len(ref)], minlength=k)
        cc = np.bincount(codes[len(ref) :], minlength=k)
        return float(_jensen_shannon_counts(rc, cc))
    raise ValueError(
        f"unknown drift method {method!r}; use {NUMERIC_METHOD} or {CATEGORICAL_METHOD}"
    )


def column_scores(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    columns: Sequence[str] = DRIFT_COLUMNS,
    methods: Mapping[str, str] = METHODS,
) -> pd.Series:
    """Drift score of each engineered column of ``batch`` against ``reference`` (fast path).

    Gives the numbers Evidently's report shows, without building a report; the benchmark uses it
    to score hundreds of batches.
    """
    return pd.Series(
        {c: column_distance(reference[c], batch[c], methods[c]) for c in columns}, dtype=float
    )


# --- null distribution of the scores ---------------------------------------------------------


class ReferenceScorer:
    """Scores many batches against one reference: the reference's value counts are kept.

    Gives exactly :func:`column_scores`, but each batch costs a merge with the reference's
    distinct values instead of a pass over all its rows (the benchmark scores thousands).
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        columns: Sequence[str] = DRIFT_COLUMNS,
        methods: Mapping[str, str] = METHODS,
    ):
        self.columns = list(columns)
        self.methods = {c: methods[c] for c in self.columns}
        self._support: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}
        for col in self.columns:
            values = self._values(reference[col], self.methods[col])
            self._support[col], self._counts[col] = np.unique(values, return_counts=True)

    @staticmethod
    def _values(series: pd.Series, method: str) -> np.ndarray:
        valid = _valid(series)
        return valid.to_numpy(float) if method == NUMERIC_METHOD else valid.astype(str).to_numpy()

    def score(self, batch: pd.DataFrame) -> pd.Series:
        """Drift score of each column of ``batch``."""
        out = {}
        for col in self.columns:
            method, support = self.methods[col], self._support[col]
            cur = self._values(batch[col], method)
            if not len(cur) or not len(support):
                out[col] = math.nan
                continue
            values = np.union1d(support, cur)
            ref_counts = np.zeros(len(values))
            ref_counts[np.searchsorted(values, support)] = self._counts[col]
            cur_counts = np.bincount(np.searchsorted(values, cur), minlength=len(values))
            if method == NUMERIC_METHOD:
                out[col] = float(_wasserstein_counts(ref_counts, cur_counts, values.astype(float)))
            else:
                out[col] = float(_jensen_shannon_counts(ref_counts, cur_counts))
        return pd.Series(out, dtype=float)


def tail_caps(
    reference: pd.DataFrame, methods: Mapping[str, str] = METHODS, quantile: float = TAIL_QUANTILE
) -> dict[str, tuple[float, float]]:
    """Lower and upper caps of each numeric column: its reference quantiles ``q`` and ``1 - q``."""
    caps = {}
    for col, method in methods.items():
        if method == NUMERIC_METHOD and col in reference.columns:
            values = _valid(reference[col]).to_numpy(float)
            if len(values):
                lo, hi = np.quantile(values, [quantile, 1 - quantile])
                caps[col] = (float(lo), float(hi))
    return caps


def cap_tails(frame: pd.DataFrame, caps: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """Copy of ``frame`` with each capped column clipped to its ``(low, high)``: what is monitored.

    Applied identically to the reference and every batch, so a tail shift still shows (as mass
    piling up at the cap) while a single extreme patient can move a distance only a little.
    """
    out = frame.copy()
    for col, (lo, hi) in caps.items():
        if col in out.columns:
            out[col] = out[col].clip(lo, hi)
    return out


def _null_indices(
    n_total: int, size: int, n_batches: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Row positions of ``n_batches`` random batches of ``size`` rows (each without replacement).

    With ``groups`` (the patient of each row), a batch is made of whole patients taken in random
    order (only the last one may be cut): a new batch brings new patients, and a patient's
    encounters look alike, so rows drawn one by one would leave each patient on both sides and
    make the null distances too small.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return np.stack([rng.permutation(n_total)[:size] for _ in range(n_batches)])
    codes, _ = pd.factorize(pd.Series(groups))
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.empty((n_batches, size), dtype=np.int64)
    for b in range(n_batches):
        perm = rng.permutation(len(sizes))
        needed = int(np.searchsorted(np.cumsum(sizes[perm]), size)) + 1
        chosen = perm[:needed]
        # Positions of the chosen patients' rows, concatenated: starts repeated + offsets.
        lengths = sizes[chosen]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[b] = order[np.repeat(starts[chosen], lengths) + offsets][:size]
    return out


def _subsample(n_total: int, batch_size: int) -> tuple[int, float]:
    """Pseudo-batch size and score scale for holding batches out of a reference of n_total rows.

    A batch held out of the reference is scored against the *rest*, so pseudo-batches must leave
    a real reference behind (at most half the rows). Null distances scale like
    ``sqrt(1/n_batch + 1/n_reference)`` (both distances are asymptotically a Gaussian process
    functional with that variance), so the scores of an ``m`` versus ``n_total - m`` split are
    rescaled to the ``batch_size`` versus ``n_total`` comparison made in production.
    """
    if n_total < 4:
        raise ValueError(f"the reference has {n_total} rows; calibration needs at least 4")
    m = max(1, min(batch_size, n_total // 2))
    scale = math.sqrt((1 / batch_size + 1 / n_total) / (1 / m + 1 / (n_total - m)))
    return m, scale


def _batch_counts(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Counts of each code in each batch of ``idx`` (shape ``(batches, k)``)."""
    b = idx.shape[0]
    flat = (codes[idx] + (np.arange(b)[:, None] * k)).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k)


def _null_column_scores(values: pd.Series, method: str, idx: np.ndarray) -> np.ndarray:
    """Score of each held-out batch of ``idx`` against the rest of the reference, for one column."""
    if method == NUMERIC_METHOD:
        support, codes = np.unique(values.to_numpy(float), return_inverse=True)
    else:
        codes, uniques = pd.factorize(values.astype(str), sort=True)
        support = np.arange(len(uniques), dtype=float)
    k = len(support)
    if k <= 1:
        return np.zeros(idx.shape[0])
    total = np.bincount(codes, minlength=k)
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], _CHUNK):
        part = idx[start : start + _CHUNK]
        cur = _batch_counts(codes, part, k)
        ref = total[None, :] - cur
        if method == NUMERIC_METHOD:
            out[start : start + len(part)] = _wasserstein_counts(ref, cur, support)
        else:
            out[start : start + len(part)] = _jensen_shannon_counts(ref, cur)
    return out


def _auc_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC from counts of positives and negatives per sorted score value (ties count half)."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, -1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((pos * (below + neg / 2)).sum(-1)) / (n_pos * n_neg)


def _null_prediction_scores(
    proba: np.ndarray, label: np.ndarray | None, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Prediction-drift scores and ROC AUC drops of held-out batches against the rest."""
    support, codes = np.unique(proba, return_inverse=True)
    k = len(support)
    total = np.bincount(codes, minlength=k)
    drift = np.empty(idx.shape[0])
    drop = None if label is None else np.empty(idx.shape[0])
    if label is not None:
        pos_codes = np.where(label == 1, codes, k)  # k = "not a positive" overflow bin
        total_pos = np.bincount(codes[label == 1], minlength=k)
    for start in range(0, idx.shape[0], _CHUNK):
        part = idx[start : start + _CHUNK]
        cur = _batch_counts(codes, part, k)
        ref = total[None, :] - cur
        drift[start : start + len(part)] = (
            _wasserstein_counts(ref, cur, support) if k > 1 else np.zeros(len(part))
        )
        if label is not None:
            cur_pos = _batch_counts(pos_codes, part, k + 1)[:, :k]
            ref_pos = total_pos[None, :] - cur_pos
            auc_cur = _auc_counts(cur_pos, cur - cur_pos)
            auc_ref = _auc_counts(ref_pos, ref - ref_pos)
            drop[start : start + len(part)] = auc_ref - auc_cur
    return drift, drop


def _upper_cut(null: np.ndarray, alpha: float) -> float:
    """A cut with at most ``alpha`` of the null values at or above it, between two null values.

    Placing the cut halfway between observed values keeps discrete scores (a few categories)
    from sitting exactly on it, where ``>=`` would misfire.
    """
    values = np.sort(np.asarray(null, dtype=float)[np.isfinite(null)])[::-1]
    if not len(values):
        return math.inf
    allowed = int(math.floor(alpha * len(values) + 1e-9))
    if allowed >= len(values):
        return float(values[-1])
    at = values[allowed]
    higher = values[values > at]
    if higher.size:
        return float((higher.min() + at) / 2)
    return float(at + max(abs(at) * 0.01, 1e-6))


@dataclass
class Thresholds:
    """Thresholds of one decision and its expected false-alarm rate under "no drift".

    Attributes:
        per_column: Column -> drift-score threshold (drift when score >= threshold).
        share_threshold: Share of drifted columns that means data drift.
        min_drifted_columns: The same as a number of columns.
        prediction_drift_threshold: Prediction drift when the score >= this.
        performance_tolerance: Largest ROC AUC drop that is no drift; None without labels.
        false_alarm_rate: Target false-alarm rate of the whole decision.
        alpha: False-alarm budget of each signal (the target split evenly).
        expected_false_alarm: Signal -> false-alarm rate measured on the null batches.
        calibrated: Which thresholds came from the calibration (the rest were given).
    """

    per_column: dict[str, float]
    share_threshold: float
    min_drifted_columns: int
    prediction_drift_threshold: float
    performance_tolerance: float | None
    false_alarm_rate: float
    alpha: float
    expected_false_alarm: dict[str, float]
    calibrated: dict[str, bool]

    @property
    def expected_false_alarm_rate(self) -> float:
        """Upper bound of the decision's false-alarm rate: the sum over its signals."""
        return float(min(1.0, sum(self.expected_false_alarm.values())))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-safe)."""
        return {
            "per_column": dict(self.per_column),
            "share_threshold": self.share_threshold,
            "min_drifted_columns": self.min_drifted_columns,
            "prediction_drift_threshold": self.prediction_drift_threshold,
            "performance_tolerance": self.performance_tolerance,
            "false_alarm_rate": self.false_alarm_rate,
            "alpha": self.alpha,
            "expected_false_alarm": dict(self.expected_false_alarm),
            "expected_false_alarm_rate": self.expected_false_alarm_rate,
            "calibrated": dict(self.calibrated),
        }


@dataclass
class Calibration:
    """Null drift scores of one reference at one batch size, from which thresholds derive.

    Attributes:
        batch_size: Rows per monitored batch the scores are scaled to.
        columns: Monitored columns, in the order of ``feature_null``'s columns.
        feature_null: ``(n_null, n_columns)`` column drift scores of no-drift batches.
        prediction_null: ``(n_null,)`` prediction-drift scores of no-drift batches.
        performance_null: ``(n_null,)`` ROC AUC drops of no-drift batches, or None.
        meta: Sizes, scales, seed and keys the scores were computed with.
        from_cache: Whether this object was read from the cache instead of computed.
    """

    batch_size: int
    columns: list[str]
    feature_null: np.ndarray
    prediction_null: np.ndarray
    performance_null: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def n_null(self) -> int:
        """Number of null batches."""
        return int(self.feature_null.shape[0])

    def thresholds(
        self,
        false_alarm_rate: float = 0.05,
        *,
        labelled: bool = False,
        share_threshold: float | None = None,
        prediction_drift_threshold: float | None = None,
        performance_tolerance: float | None = None,
    ) -> Thresholds:
        """Thresholds whose decision raises a false alarm on at most ``false_alarm_rate`` batches.

        The target is split evenly over the signals in use (data, predictions, and performance
        when ``labelled``), so by the union bound the decision's false-alarm rate stays under
        the target whatever the dependence between signals. For data drift, each column's null
        scores are divided by their 95th percentile; with ``k`` the number of columns that make
        data drift (``ceil(share_threshold * n_columns)``, 1 by default), the cut ``c`` is the
        ``1 - alpha`` point of the k-th largest scaled score over the null batches, and column
        ``j``'s threshold is ``c`` times its 95th percentile. This accounts for correlated
        columns without needing extreme per-column quantiles.

        Args:
            false_alarm_rate: Target share of no-drift batches reported as drift, in (0, 1).
            labelled: Whether the batch has labels (adds the performance signal).
            share_threshold: Share of drifted columns meaning data drift; None means one column.
                Per-column thresholds are calibrated for whichever share is used.
            prediction_drift_threshold: Fixed threshold instead of the calibrated one.
            performance_tolerance: Fixed ROC AUC tolerance instead of the calibrated one.

        Returns:
            The thresholds and their measured null false-alarm rates.
        """
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        n_cols = len(self.columns)
        if share_threshold is None:
            k = 1
            share = k / n_cols
        else:
            if not 0 < share_threshold <= 1:
                raise ValueError(f"share_threshold must be in (0, 1], got {share_threshold}")
            k = max(1, math.ceil(share_threshold * n_cols - 1e-9))
            share = float(share_threshold)
        use_perf = labelled and self.performance_null is not None
        alpha = false_alarm_rate / (3 if use_perf else 2)

        scale = np.maximum(np.quantile(self.feature_null, _SCALE_QUANTILE, axis=0), _MIN_SCALE)
        scaled = self.feature_null / scale
        kth = -np.sort(-scaled, axis=1)[:, k - 1]
        cut = _upper_cut(kth, alpha)
        per_column = {c: float(cut * s) for c, s in zip(self.columns, scale, strict=True)}
        n_drifted = (self.feature_null >= np.array([per_column[c] for c in self.columns])).sum(1)
        expected = {"data_drift": float(np.mean(n_drifted >= k))}

        pred_thr = (
            _upper_cut(self.prediction_null, alpha)
            if prediction_drift_threshold is None
            else float(prediction_drift_threshold)
        )
        expected["prediction_drift"] = float(np.mean(self.prediction_null >= pred_thr))

        tol = None
        if use_perf:
            drops = self.performance_null[np.isfinite(self.performance_null)]
            tol = (
                max(_upper_cut(drops, alpha), 0.0)
                if performance_tolerance is None
                else float(performance_tolerance)
            )
            expected["performance"] = float(np.mean(drops > tol)) if len(drops) else 0.0
        return Thresholds(
            per_column=per_column,
            share_threshold=share,
            min_drifted_columns=k,
            prediction_drift_threshold=float(pred_thr),
            performance_tolerance=tol,
            false_alarm_rate=float(false_alarm_rate),
            alpha=float(alpha),
            expected_false_alarm=expected,
            calibrated={
                "per_column": True,
                "share_threshold": share_threshold is None,
                "prediction_drift_threshold": prediction_drift_threshold is None,
                "performance_tolerance": use_perf and performance_tolerance is None,
            },
        )

    def to_bytes(self) -> bytes:
        """Serialise the null scores and metadata (``.npz``)."""
        buf = io.BytesIO()
        arrays = {"feature_null": self.feature_null, "prediction_null": self.prediction_null}
        if self.performance_null is not None:
            arrays["performance_null"] = self.performance_null
        meta = {**self.meta, "batch_size": self.batch_size, "columns": self.columns}
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Calibration:
        """Read what :meth:`to_bytes` wrote."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                batch_size=int(meta.pop("batch_size")),
                columns=list(meta.pop("columns")),
                feature_null=data["feature_null"],
                prediction_null=data["prediction_null"],
                performance_null=data["performance_null"] if "performance_null" in data else None,
                meta=meta,
                from_cache=True,
            )


def calibrate(
    reference: pd.DataFrame,
    model_reference_proba: np.ndarray,
    model_reference_label: np.ndarray | None,
    batch_size: int,
    *,
    n_null: int = 1000,
    seed: int = 0,
    columns: Sequence[str] = DRIFT_COLUMNS,
    methods: Mapping[str, str] = METHODS,
    groups: np.ndarray | None = None,
    model_reference_groups: np.ndarray | None = None,
) -> Calibration:
    """Null drift scores of ``n_null`` random no-drift batches of ``batch_size`` rows.

    Each null batch is drawn from the reference (without replacement; whole patients when
    ``groups`` are given, see :func:`_null_indices`) and scored against the rest of it, with the
    distances Evidently computes, vectorised over batches; see :func:`_subsample` for how the
    scores are scaled to the production comparison.

    Args:
        reference: Engineered feature reference (``engineer_features`` output).
        model_reference_proba: The model's predicted probabilities on held-out reference rows.
        model_reference_label: Their 0/1 labels, or None (no performance calibration).
        batch_size: Rows of a monitored batch.
        n_null: Number of null batches (at least 100).
        seed: Seed of the batch draws.
        columns: Monitored columns.
        methods: Column -> ``wasserstein`` or ``jensenshannon``.
        groups: Patient of each reference row: null batches then hold out whole patients.
        model_reference_groups: Patient of each held-out row, likewise.

    Returns:
        The calibration (null scores and metadata).
    """
    if n_null < 100:
        raise ValueError(
            f"n_null must be at least 100 for a usable null distribution, got {n_null}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.monotonic()
    columns = list(columns)
    n_ref = len(reference)
    m_feat, scale_feat = _subsample(n_ref, batch_size)
    idx = _null_indices(n_ref, m_feat, n_null, seed, groups)
    feature_null = np.column_stack(
        [_null_column_scores(reference[c].reset_index(drop=True), methods[c], idx) for c in columns]
    )
    feature_null *= scale_feat

    proba = np.asarray(model_reference_proba, dtype=float)
    n_model = len(proba)
    m_pred, scale_pred = _subsample(n_model, batch_size)
    idx_pred = _null_indices(n_model, m_pred, n_null, seed + 1, model_reference_groups)
    label = None if model_reference_label is None else np.asarray(model_reference_label, int)
    pred_null, perf_null = _null_prediction_scores(proba, label, idx_pred)
    pred_null *= scale_pred
    if perf_null is not None:
        perf_null *= scale_pred
    meta = {
        "version": CALIBRATION_VERSION,
        "n_null": n_null,
        "seed": seed,
        "reference_rows": n_ref,
        "model_reference_rows": n_model,
        "grouped": {
            "reference": groups is not None,
            "model_reference": model_reference_groups is not None,
        },
        "feature_pseudo_batch": m_feat,
        "feature_scale": scale_feat,
        "prediction_pseudo_batch": m_pred,
        "prediction_scale": scale_pred,
        "seconds": round(time.monotonic() - started, 3),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return Calibration(batch_size, columns, feature_null, pred_null, perf_null, meta)


# --- reference preparation and its cache -----------------------------------------------------


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def default_model_reference(reference_uri: str) -> list[str]:
    """Held-out rows for prediction drift and performance, next to a prepared reference.

    A model scores its own training rows better than new ones (in-sample predictions are more
    extreme for trees), so comparing a batch's predictions with predictions on the training
    reference would report drift on every batch. When the reference is the ``initial_train``
    split of a prepared folder, its ``validation`` and ``test`` splits (same period, patients
    not trained on) are used; otherwise the reference itself.
    """
    name = reference_uri.rstrip("/").rsplit("/", 1)[-1]
    folder = reference_uri[: len(reference_uri) - len(name)].rstrip("/") or "."
    if name == "initial_train.csv":
        held_out = [storage.join(folder, f) for f in ("validation.csv", "test.csv")]
        if all(storage.exists(u) for u in held_out):
            return held_out
    return [reference_uri]


def reference_info(reference_uri: str) -> dict[str, Any]:
    """Data source and banner of a reference from the manifest of its prepared folder, if any."""
    name = reference_uri.rstrip("/").rsplit("/", 1)[-1]
    folder = reference_uri[: len(reference_uri) - len(name)].rstrip("/") or "."
    manifest_uri = storage.join(folder, "manifest.json")
    try:
        manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None
    except (storage.StorageError, ValueError):
        manifest = None
    if not manifest:
        return {"data_source": None, "banner": None, "manifest": None}
    return {
        "data_source": manifest.get("data_source"),
        "banner": manifest.get("banner"),
        "manifest": manifest_uri,
    }


@dataclass
class PreparedReference:
    """Everything computed once per reference, held-out rows, model version and batch size.

    Attributes:
        features: Monitored feature reference: ``engineer_features`` output with numeric tails
            capped (:func:`cap_tails`), plus ``patient_nbr`` when known.
        caps: The caps, to apply to every batch.
        model_reference: Held-out rows' ``prediction_proba``, ``prediction`` and ``target``.
        calibration: Null drift scores at the batch size.
        reference_sha256: sha256 of the reference file.
        model_reference_sha256: sha256 of each held-out file.
        cache_dir: Where the cached files live.
        in_sample: Whether the held-out rows are the reference itself.
        from_cache: Which parts were read from the cache.
    """

    features: pd.DataFrame
    caps: dict[str, tuple[float, float]]
    model_reference: pd.DataFrame
    calibration: Calibration
    reference_sha256: str
    model_reference_sha256: list[str]
    cache_dir: str
    in_sample: bool
    from_cache: dict[str, bool]


def _model_key(info: Any) -> str:
    run = (getattr(info, "run_id", "") or "")[:8]
    return f"{getattr(info, 'name', 'model')}-v{getattr(info, 'version', '0')}-{run}"


def _read_raw(uri: str) -> tuple[pd.DataFrame, str]:
    blob = storage.read_bytes(uri)
    return read_raw_csv(blob, source=uri), storage.sha256_bytes(blob)


def _target_name(info: Any) -> str:
    return getattr(info, "target", "") or get_settings().target


def predict_proba(pipeline: Pipeline, raw: pd.DataFrame) -> np.ndarray:
    """Positive-class probability of each raw encounter row."""
    return np.asarray(pipeline.predict_proba(raw)[:, 1], dtype=float)


def prepare_reference(
    reference_uri: str,
    model_reference_uris: Sequence[str],
    pipeline: Pipeline,
    info: Any,
    batch_size: int,
    *,
    n_null: int = 1000,
    seed: int = 0,
    cache_root: str | None = None,
) -> PreparedReference:
    """Engineered reference, held-out predictions and calibration, from the cache when possible.

    Layout: ``<cache_root>/v<version>/<reference sha>/features.parquet``; below it
    ``<held-out sha>/<model>-v<version>-<run>/predictions.parquet`` and
    ``calibration-n<batch>-b<n_null>-s<seed>-v<version>.npz``. Files are keyed by content, so a
    changed reference, held-out set or model version never reuses stale work.

    Args:
        reference_uri: Raw reference CSV (local or ``s3://``).
        model_reference_uris: Raw held-out CSVs for predictions and performance.
        pipeline: The production model.
        info: Its registry ``ModelInfo`` (name, version, run_id, target, threshold).
        batch_size: Rows of the monitored batch.
        n_null: Null batches of the calibration.
        seed: Seed of the calibration.
        cache_root: Cache folder (default ``<storage>/drift_cache``).
    """
    cache_root = cache_root or storage.join(get_settings().storage, CACHE_FOLDER)
    ref_sha = storage.sha256(reference_uri)
    model_shas = [storage.sha256(u) for u in model_reference_uris]
    in_sample = list(model_reference_uris) == [reference_uri]
    ref_dir = storage.join(cache_root, f"v{CALIBRATION_VERSION}", ref_sha[:16])
    held_key = storage.sha256_bytes("|".join(model_shas).encode())[:16]
    model_dir = storage.join(ref_dir, held_key, _model_key(info))
    from_cache: dict[str, bool] = {}

    features_uri = storage.join(ref_dir, "features.parquet")
    if storage.exists(features_uri):
        features = storage.read_parquet(features_uri)
        from_cache["features"] = True
    else:
        raw, _ = _read_raw(reference_uri)
        features = engineer_features(clean_data(raw))
        if GROUP_COLUMN in raw.columns:
            features[GROUP_COLUMN] = raw[GROUP_COLUMN].to_numpy()
        storage.write_parquet(features_uri, features.reset_index(drop=True))
        from_cache["features"] = False
    caps = tail_caps(features)
    features = cap_tails(features, caps)

    preds_uri = storage.join(model_dir, "predictions.parquet")
    if storage.exists(preds_uri):
        model_ref = storage.read_parquet(preds_uri)
        from_cache["predictions"] = True
    else:
        raw = pd.concat([_read_raw(u)[0] for u in model_reference_uris], ignore_index=True)
        proba = predict_proba(pipeline, raw)
        model_ref = pd.DataFrame({PROBA_COLUMN: proba})
        if GROUP_COLUMN in raw.columns:
            model_ref[GROUP_COLUMN] = raw[GROUP_COLUMN].to_numpy()
        model_ref[LABEL_COLUMN] = (proba >= float(info.threshold)).astype(int)
        if TARGET in raw.columns:
            model_ref[TARGET_COLUMN] = make_target(raw, _target_name(info))
        storage.write_parquet(preds_uri, model_ref)
        from_cache["predictions"] = False

    calib_uri = storage.join(
        model_dir, f"calibration-n{batch_size}-b{n_null}-s{seed}-v{CALIBRATION_VERSION}.npz"
    )
    calibration = None
    if storage.exists(calib_uri):
        try:
            calibration = Calibration.from_bytes(storage.read_bytes(calib_uri))
        except (ValueError, KeyError, OSError) as exc:  # a damaged cache file is recomputed
            log.warning("ignoring unreadable calibration %s: %s", calib_uri, exc)
    if calibration is None:
        labels = model_ref[TARGET_COLUMN].to_numpy() if TARGET_COLUMN in model_ref else None
        calibration = calibrate(
            features,
            model_ref[PROBA_COLUMN].to_numpy(),
            labels,
            batch_size,
            n_null=n_null,
            seed=seed,
            groups=features[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in features else None,
            model_reference_groups=(
                model_ref[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in model_ref else None
            ),
        )
        calibration.meta.update(
            reference_sha256=ref_sha, model_reference_sha256=model_shas, model=_model_key(info)
        )
        storage.write_bytes(calib_uri, calibration.to_bytes())
        # A readable summary next to the scores: default thresholds for unlabelled batches.
        summary = {
            **calibration.meta,
            "batch_size": batch_size,
            "default_thresholds": calibration.thresholds(0.05).to_dict(),
        }
        storage.write_json(calib_uri[: -len(".npz")] + ".json", summary)
    from_cache["calibration"] = calibration.from_cache
    return PreparedReference(
        features=features,
        caps=caps,
        model_reference=model_ref,
        calibration=calibration,
        reference_sha256=ref_sha,
        model_reference_sha256=model_shas,
        cache_dir=model_dir,
        in_sample=in_sample,
        from_cache=from_cache,
    )


# --- Evidently reports -----------------------------------------------------------------------


def data_drift_report(
    reference: pd.DataFrame, batch: pd.DataFrame, thresholds: Thresholds
) -> tuple[Any, pd.DataFrame]:
    """Evidently data-drift report with the calibrated per-column thresholds, and its table.

    Returns:
        The Evidently snapshot and a table with one row per column: ``column``, ``type``,
        ``method``, ``score``, ``threshold``, ``drifted`` and ``drifted_at_0.1`` (what Evidently's
        uncalibrated default would say), sorted by score relative to threshold.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(thresholds.per_column)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if METHODS[c] == NUMERIC_METHOD],
        categorical_columns=[c for c in columns if METHODS[c] == CATEGORICAL_METHOD],
    )
    preset = DataDriftPreset(
        columns=columns,
        per_column_method={c: METHODS[c] for c in columns},
        per_column_threshold=dict(thresholds.per_column),
        drift_share=thresholds.share_threshold,
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(batch[columns].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(reference[columns].reset_index(drop=True), definition),
    )
    rows = []
    for metric in snapshot.dict()["metrics"][1:]:
        config = metric["config"]
        if "column" not in config:
            continue
        score = float(metric["value"])
        threshold = float(config["threshold"])
        rows.append(
            {
                "column": config["column"],
                "type": "numeric" if config["method"] == NUMERIC_METHOD else "categorical",
                "method": config["method"],
                "score": score,
                "threshold": threshold,
                "drifted": bool(score >= threshold),
                "drifted_at_0.1": bool(score >= EVIDENTLY_DEFAULT_THRESHOLD),
            }
        )
    table = pd.DataFrame(rows)
    table = table.assign(_r=table["score"] / table["threshold"]).sort_values("_r", ascending=False)
    return snapshot, table.drop(columns="_r").reset_index(drop=True)


def _prediction_frame(proba: np.ndarray, threshold: float, target: np.ndarray | None = None):
    frame = pd.DataFrame({PROBA_COLUMN: np.asarray(proba, dtype=float)})
    frame[LABEL_COLUMN] = (frame[PROBA_COLUMN] >= threshold).astype(int)
    if target is not None:
        frame[TARGET_COLUMN] = np.asarray(target, dtype=int)
    return frame


def prediction_drift_report(
    model_reference: pd.DataFrame, batch_pred: pd.DataFrame, drift_threshold: float
) -> tuple[Any, float]:
    """Evidently report on the predicted probabilities (calibrated threshold) and label rate.

    Returns:
        The snapshot and the prediction-drift score (normed Wasserstein distance).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import CategoryCount, MeanValue, ValueDrift

    cols = [PROBA_COLUMN, LABEL_COLUMN]
    definition = DataDefinition(
        numerical_columns=[PROBA_COLUMN], categorical_columns=[LABEL_COLUMN]
    )
    metrics = [
        ValueDrift(column=PROBA_COLUMN, method=NUMERIC_METHOD, threshold=drift_threshold),
        # No default tests: their "within 10% of the reference" rule is not calibrated.
        MeanValue(column=PROBA_COLUMN, tests=[]),
        CategoryCount(column=LABEL_COLUMN, category=1, tests=[]),
    ]
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(batch_pred[cols].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(
            model_reference[cols].reset_index(drop=True), definition
        ),
    )
    score = float(snapshot.dict()["metrics"][0]["value"])
    return snapshot, score


def performance_report(
    model_reference: pd.DataFrame, batch_pred: pd.DataFrame, threshold: float, min_auc: float | None
) -> Any:
    """Evidently ClassificationPreset at the model's threshold, batch against held-out rows.

    Args:
        model_reference: Held-out ``prediction_proba`` and ``target``.
        batch_pred: The batch's ``prediction_proba`` and ``target``.
        threshold: The model's decision threshold.
        min_auc: Lowest batch ROC AUC that is no drift (reference minus tolerance), shown as the
            report's ROC AUC test; None leaves the test out.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset
    from evidently.tests import gte

    cols = [PROBA_COLUMN, TARGET_COLUMN]
    definition = DataDefinition(
        numerical_columns=[PROBA_COLUMN],
        categorical_columns=[TARGET_COLUMN],
        classification=[
            BinaryClassification(target=TARGET_COLUMN, prediction_probas=PROBA_COLUMN, pos_label=1)
        ],
    )
    # Only the calibrated ROC AUC test; the default "within 20% of the reference" tests of the
    # other metrics are not calibrated and would contradict the decision.
    none: list = []
    preset = ClassificationPreset(
        probas_threshold=threshold,
        rocauc_tests=[gte(min_auc)] if min_auc is not None else none,
        accuracy_tests=none, precision_tests=none, recall_tests=none, f1score_tests=none,
        logloss_tests=none, tpr_tests=none, tnr_tests=none, fpr_tests=none, fnr_tests=none,
    )  # fmt: skip
    return Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(batch_pred[cols].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(
            model_reference[cols].reset_index(drop=True), definition
        ),
    )


def performance_metrics(
    target: np.ndarray, proba: np.ndarray, threshold: float
) -> dict[str, float]:
    """ROC AUC, precision, recall, F1 (at ``proba >= threshold``) and rates of one labelled set."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    target = np.asarray(target, dtype=int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    both = len(np.unique(target)) == 2
    return {
        "roc_auc": float(roc_auc_score(target, proba)) if both else math.nan,
        "precision": float(precision_score(target, pred, zero_division=0)),
        "recall": float(recall_score(target, pred, zero_division=0)),
        "f1": float(f1_score(target, pred, zero_division=0)),
        "positive_rate": float(target.mean()) if len(target) else math.nan,
        "predicted_positive_rate": float(pred.mean()) if len(pred) else math.nan,
    }


# --- the monitor -----------------------------------------------------------------------------


@dataclass
class MonitorResult:
    """Outcome of :func:`monitor`: the decision, its evidence and where it was recorded.

    Attributes:
        status: ``"DRIFT_DETECTED"`` or ``"NO_DRIFT"``.
        reasons: Why drift was detected (empty for NO_DRIFT).
        drifted_share: Share of monitored columns that drifted.
        n_drifted_columns: Their number.
        n_columns: Number of monitored columns.
        drifted_columns: Their names, most drifted first.
        drift_table: Per-column method, score, threshold and verdict.
        prediction_drift: Whether the predicted probabilities drifted.
        prediction_drift_score: Normed Wasserstein distance of the probabilities.
        prediction_table: Reference vs batch: mean probability, predicted positive rate, score.
        performance: Reference vs batch metrics and their change (None without labels).
        performance_drop: Reference minus batch ROC AUC (None without labels).
        thresholds: The thresholds used and the expected false-alarm rate.
        report_paths: Report name -> URI of its Evidently HTML.
        model_name: Registered model name.
        model_version: Registered version monitored.
        model_uri: URI the model was loaded from.
        mlflow_run_id: Run in the monitoring experiment.
        data_source: ``synthetic`` / ``real`` (from the reference manifest) or the model's.
        banner: Synthetic-data banner, when the data is synthetic.
        batch_rows: Rows in the batch.
        reference_rows: Rows in the feature reference.
        model_reference_rows: Held-out rows behind prediction drift and performance.
        model_reference_in_sample: Whether those rows are the reference itself.
        calibration_from_cache: Whether the calibration was read from the cache.
        seconds: Wall time of each step.
        predictions: Predicted probabilities, ``set`` (reference/batch) and ``prediction_proba``.
        decision_threshold: The model's threshold on the probability.
    """

    status: str
    reasons: list[str]
    drifted_share: float
    n_drifted_columns: int
    n_columns: int
    drifted_columns: list[str]
    drift_table: pd.DataFrame
    prediction_drift: bool
    prediction_drift_score: float
    prediction_table: pd.DataFrame
    performance: pd.DataFrame | None
    performance_drop: float | None
    thresholds: Thresholds
    report_paths: dict[str, str]
    model_name: str
    model_version: str
    model_uri: str
    mlflow_run_id: str | None
    data_source: str
    banner: str | None
    batch_rows: int
    reference_rows: int
    model_reference_rows: int
    model_reference_in_sample: bool
    calibration_from_cache: bool
    seconds: dict[str, float] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    decision_threshold: float = 0.5

    @property
    def drift_detected(self) -> bool:
        """Whether the status is DRIFT_DETECTED."""
        return self.status == DRIFT_DETECTED

    def performance_metrics(self) -> dict[str, float]:
        """Batch metrics and changes (``batch_roc_auc``, ``roc_auc_change``...); {} if unlabelled."""
        if self.performance is None:
            return {}
        out: dict[str, float] = {}
        for metric, row in self.performance.iterrows():
            out[f"batch_{metric}"] = float(row["batch"])
            out[f"reference_{metric}"] = float(row["reference"])
            out[f"{metric}_change"] = float(row["change"])
        return out

    def scraps(self) -> dict[str, Any]:
        """The values the drift-monitor notebook records (its contract plus performance)."""
        out: dict[str, Any] = {
            "data_source": self.data_source,
            "drift_status": self.status,
            "drift_reasons": list(self.reasons),
            "drifted_share": float(self.drifted_share),
            "n_drifted_columns": int(self.n_drifted_columns),
            "drifted_columns": list(self.drifted_columns),
            "prediction_drift": bool(self.prediction_drift),
            "prediction_drift_score": float(self.prediction_drift_score),
            "report_paths": dict(self.report_paths),
            "model_version": self.model_version,
            "mlflow_run_id": self.mlflow_run_id,
            "batch_rows": int(self.batch_rows),
            "share_threshold": float(self.thresholds.share_threshold),
            "prediction_drift_threshold": float(self.thresholds.prediction_drift_threshold),
            "expected_false_alarm_rate": float(self.thresholds.expected_false_alarm_rate),
        }
        if self.performance is not None:
            out["performance"] = self.performance_metrics()
            out["performance_drop"] = self.performance_drop
            out["performance_tolerance"] = self.thresholds.performance_tolerance
        return out


def _resolve_local(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def _save_html(snapshot: Any, uri: str) -> str:
    """Write an Evidently snapshot's HTML to a local path or ``s3://`` URI."""
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, Path(uri).name)
            snapshot.save_html(str(local))
            storage.write_bytes(uri, local.read_bytes())
        return uri
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(uri)
    return uri


def check_model(model_uri: str) -> Any:
    """The registry entry of the production model, checked against the current raw schema.

    Cheap (no model files are read): the loop calls it before any batch or kernel.

    Returns:
        The version's :class:`~healthpredict.mlops.registry.ModelInfo`.

    Raises:
        registry.ModelNotFoundError: No such model, version or alias.
        ModelSchemaError: The model was trained on another raw schema.
    """
    from healthpredict.mlops import registry

    info = registry.get_model_info(model_uri)
    current = schema_hash()
    if info.schema_hash and info.schema_hash != current:
        raise ModelSchemaError(
            f"model {info.name} version {info.version} ({model_uri}) was trained on raw schema "
            f"{info.schema_hash}, but the current schema is {current}: its inputs no longer match "
            "the data. Retrain it on the current schema before monitoring."
        )
    return info


def _load_model(model_uri: str) -> tuple[Pipeline, Any]:
    import mlflow.sklearn

    info = check_model(model_uri)
    # The version resolved once: the pipeline matches the info even if the alias moves meanwhile.
    return mlflow.sklearn.load_model(info.model_uri), info


def monitor(
    new_data_path: str,
    reference_data_path: str | None = None,
    model_uri: str | None = None,
    reports_dir: str | None = None,
    *,
    model_reference_path: str | Sequence[str] | None = None,
    share_threshold: float | None = None,
    prediction_drift_threshold: float | None = None,
    performance_tolerance: float | None = None,
    false_alarm_rate: float = 0.05,
    n_null: int = 1000,
    seed: int = 0,
    experiment_name: str = DEFAULT_EXPERIMENT,
    min_rows: int = MIN_BATCH_ROWS,
) -> MonitorResult:
    """Monitor one batch against the reference and the production model; log it to MLflow.

    Steps: read and validate the batch (a schema problem, or fewer than ``min_rows`` rows,
    raises before any MLflow run exists);
    load the model (a missing alias or a model trained on another schema raises before any
    work); prepare the reference (cached); score the batch; build the Evidently reports with the
    calibrated thresholds; decide; save the HTML reports; log params, metrics, reports and the
    ``drift_status`` tag to the monitoring experiment. A failure after the run started ends the
    run FAILED.

    Args:
        new_data_path: Raw batch CSV (local or ``s3://``); labels are optional.
        reference_data_path: Raw reference CSV; default ``<processed_data>/initial_train.csv``.
        model_uri: Registry URI; default the champion (``models:/<model_name>@champion``).
        reports_dir: Folder or ``s3://`` prefix for the HTML reports; default ``./reports``.
        model_reference_path: Held-out raw CSV(s) for prediction drift and performance (a list
            or comma-separated); default :func:`default_model_reference`.
        share_threshold: Share of drifted columns meaning data drift; None = one column, with
            per-column thresholds calibrated for it.
        prediction_drift_threshold: Fixed prediction-drift threshold; None = calibrated.
        performance_tolerance: Fixed ROC AUC tolerance; None = calibrated.
        false_alarm_rate: Target false-alarm rate of the decision (calibration).
        n_null: Null batches of the calibration.
        seed: Seed of the calibration.
        experiment_name: MLflow experiment of the monitoring runs.
        min_rows: Fewest rows a batch may have (:data:`MIN_BATCH_ROWS`).

    Returns:
        The decision and its evidence.

    Raises:
        UCIDataError: The batch file is empty, not UTF-8, truncated or not a CSV.
        RawSchemaError: The batch does not match the raw schema (every problem listed).
        BatchTooSmallError: The batch has fewer than ``min_rows`` rows.
        registry.ModelNotFoundError: No such model, version or alias.
        ModelSchemaError: The model was trained on another raw schema.
    """
    from healthpredict.mlops import tracking

    clock = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[step] = round(now - clock, 3)
        clock = now

    settings = get_settings()
    new_data_path = _resolve_local(str(new_data_path))
    reference_data_path = _resolve_local(
        str(reference_data_path or storage.join(layout.processed_data(), "initial_train.csv"))
    )
    model_uri = model_uri or f"models:/{settings.model_name}@champion"
    reports_dir = _resolve_local(str(reports_dir or "reports"))
    held_out = [_resolve_local(u) for u in _as_list(model_reference_path)] or (
        default_model_reference(reference_data_path)
    )

    batch_raw = read_raw_csv(storage.read_bytes(new_data_path), source=new_data_path)
    validate_raw(batch_raw, source=new_data_path)  # before any MLflow run: nothing to mark
    if len(batch_raw) < min_rows:
        raise BatchTooSmallError(
            f"too few rows: {new_data_path} has {len(batch_raw)} row(s), the drift monitor needs "
            f"at least {min_rows} (drift statistics on fewer rows are noise): monitor it "
            "together with the next rows as one batch"
        )
    lap("read_validate")
    tracking.setup_mlflow()
    pipeline, info = _load_model(model_uri)
    lap("load_model")

    import mlflow

    exp_id = tracking.experiment_id(experiment_name)
    run = mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"monitor {Path(new_data_path).name}",
        tags=tracking.run_tags(),
        # A caller's own run (a DAG task, a notebook) stays open: ours becomes its child.
        nested=mlflow.active_run() is not None,
    )
    try:
        result = _monitor_in_run(
            batch_raw, new_data_path, reference_data_path, held_out, pipeline, info, model_uri,
            reports_dir, share_threshold, prediction_drift_threshold, performance_tolerance,
            false_alarm_rate, n_null, seed, seconds, lap,
        )  # fmt: skip
        result.mlflow_run_id = run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return result


def _monitor_in_run(
    batch_raw, new_data_path, reference_data_path, held_out, pipeline, info, model_uri,
    reports_dir, share_threshold, prediction_drift_threshold, performance_tolerance,
    false_alarm_rate, n_null, seed, seconds, lap,
) -> MonitorResult:  # fmt: skip
    """The body of :func:`monitor` once its MLflow run is active."""
    import mlflow

    n_batch = len(batch_raw)
    prepared = prepare_reference(
        reference_data_path, held_out, pipeline, info, n_batch, n_null=n_null, seed=seed
    )
    lap("reference")
    if prepared.in_sample:
        log.warning(
            "prediction drift and performance compare the batch with the reference rows "
            "themselves (%s); if the model was trained on them its predictions there are "
            "optimistic: pass model_reference_path with held-out rows",
            reference_data_path,
        )

    batch_eng = cap_tails(engineer_features(clean_data(batch_raw)), prepared.caps)
    proba = predict_proba(pipeline, batch_raw)
    labelled = TARGET in batch_raw.columns and TARGET_COLUMN in prepared.model_reference
    target = make_target(batch_raw, _target_name(info)) if labelled else None
    threshold = float(info.threshold)
    batch_pred = _prediction_frame(proba, threshold, target)
    thresholds = prepared.calibration.thresholds(
        false_alarm_rate,
        labelled=labelled,
        share_threshold=share_threshold,
        prediction_drift_threshold=prediction_drift_threshold,
        performance_tolerance=performance_tolerance,
    )
    lap("score")

    snapshots: dict[str, Any] = {}
    snapshots["data_drift"], table = data_drift_report(prepared.features, batch_eng, thresholds)
    drifted = table.loc[table["drifted"], "column"].tolist()
    drifted_share = len(drifted) / len(table)
    snapshots["prediction_drift"], pred_score = prediction_drift_report(
        prepared.model_reference, batch_pred, thresholds.prediction_drift_threshold
    )
    pred_drift = bool(pred_score >= thresholds.prediction_drift_threshold)
    ref_pred = prepared.model_reference
    prediction_table = pd.DataFrame(
        {
            "reference": [
                float(ref_pred[PROBA_COLUMN].mean()),
                float(ref_pred[LABEL_COLUMN].mean()),
            ],
            "batch": [float(proba.mean()), float(batch_pred[LABEL_COLUMN].mean())],
        },
        index=pd.Index(["mean_probability", "predicted_positive_rate"], name="statistic"),
    )
    prediction_table["change"] = prediction_table["batch"] - prediction_table["reference"]

    performance = None
    drop = None
    if labelled:
        ref_m = performance_metrics(ref_pred[TARGET_COLUMN], ref_pred[PROBA_COLUMN], threshold)
        cur_m = performance_metrics(target, proba, threshold)
        performance = pd.DataFrame({"reference": ref_m, "batch": cur_m})
        performance.index.name = "metric"
        performance["change"] = performance["batch"] - performance["reference"]
        drop = ref_m["roc_auc"] - cur_m["roc_auc"]
        drop = None if not math.isfinite(drop) else float(drop)
        tol = thresholds.performance_tolerance
        min_auc = (
            ref_m["roc_auc"] - tol if tol is not None and math.isfinite(ref_m["roc_auc"]) else None
        )
        if len(np.unique(target)) > 1:
            snapshots["performance"] = performance_report(ref_pred, batch_pred, threshold, min_auc)
        else:  # Evidently fails on one class; the table says the ROC AUC is undefined
            log.warning("the batch's labels are all %s: no performance report", target[0])
    lap("reports")

    status, reasons = decide(
        drifted_share,
        thresholds.share_threshold,
        pred_drift,
        drop,
        thresholds.performance_tolerance,
    )
    report_paths = {
        name: _save_html(snap, storage.join(reports_dir, f"{name}.html"))
        for name, snap in snapshots.items()
    }
    lap("save_html")

    source = reference_info(reference_data_path)
    data_source = source["data_source"] or {"uci": "real"}.get(info.data_source, info.data_source)
    result = MonitorResult(
        status=status,
        reasons=reasons,
        drifted_share=drifted_share,
        n_drifted_columns=len(drifted),
        n_columns=len(table),
        drifted_columns=drifted,
        drift_table=table,
        prediction_drift=pred_drift,
        prediction_drift_score=pred_score,
        prediction_table=prediction_table,
        performance=performance,
        performance_drop=drop,
        thresholds=thresholds,
        report_paths=report_paths,
        model_name=info.name,
        model_version=str(info.version),
        model_uri=model_uri,
        mlflow_run_id=None,
        data_source=data_source or "unknown",
        banner=source["banner"],
        batch_rows=n_batch,
        reference_rows=len(prepared.features),
        model_reference_rows=len(prepared.model_reference),
        model_reference_in_sample=prepared.in_sample,
        calibration_from_cache=prepared.calibration.from_cache,
        seconds=seconds,
        predictions=pd.concat(
            [
                pd.DataFrame({"set": "reference", PROBA_COLUMN: ref_pred[PROBA_COLUMN].to_numpy()}),
                pd.DataFrame({"set": "batch", PROBA_COLUMN: proba}),
            ],
            ignore_index=True,
        ),
        decision_threshold=threshold,
    )
    _log_run(result, snapshots, new_data_path, reference_data_path, held_out, prepared, seed)
    lap("mlflow")
    mlflow.set_tag("seconds", json.dumps(seconds))
    return result


def _log_run(
    result: MonitorResult,
    snapshots: dict[str, Any],
    new_data_path: str,
    reference_data_path: str,
    held_out: list[str],
    prepared: PreparedReference,
    seed: int,
) -> None:
    """Params, metrics, reports and tags of the monitoring run (the active MLflow run)."""
    import mlflow

    t = result.thresholds
    mlflow.log_params(
        {
            "new_data_path": new_data_path,
            "reference_data_path": reference_data_path,
            "model_reference_path": ",".join(held_out)[:6000],
            "model_uri": result.model_uri,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "batch_size": result.batch_rows,
            "reference_rows": result.reference_rows,
            "model_reference_rows": result.model_reference_rows,
            "labelled": result.performance is not None,
            "share_threshold": t.share_threshold,
            "min_drifted_columns": t.min_drifted_columns,
            "prediction_drift_threshold": t.prediction_drift_threshold,
            "performance_tolerance": t.performance_tolerance,
            "false_alarm_rate": t.false_alarm_rate,
            "calibrated": json.dumps(t.calibrated, sort_keys=True),
            "n_null": prepared.calibration.n_null,
            "calibration_seed": seed,
            "reference_sha256": prepared.reference_sha256,
        }
    )
    metrics = {
        "data_drift_detected": float(result.drift_detected),
        "feature_drift_detected": float(result.drifted_share >= t.share_threshold - 1e-12),
        "drifted_share": result.drifted_share,
        "n_drifted_columns": result.n_drifted_columns,
        "prediction_drift_score": result.prediction_drift_score,
        "prediction_drift_detected": float(result.prediction_drift),
        "mean_probability": float(result.prediction_table.loc["mean_probability", "batch"]),
        "predicted_positive_rate": float(
            result.prediction_table.loc["predicted_positive_rate", "batch"]
        ),
        "expected_false_alarm_rate": t.expected_false_alarm_rate,
    }
    for key, value in result.performance_metrics().items():
        if math.isfinite(value):
            metrics[key] = value
    if result.performance_drop is not None:
        metrics["roc_auc_drop"] = result.performance_drop
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for name, snap in snapshots.items():
            src = Path(result.report_paths[name])
            if storage.is_s3(result.report_paths[name]):
                src = Path(tmp, f"{name}.html")
                snap.save_html(str(src))
            mlflow.log_artifact(str(src), artifact_path="drift_reports")
        table_path = Path(tmp, "drift_table.csv")
        result.drift_table.to_csv(table_path, index=False)
        mlflow.log_artifact(str(table_path), artifact_path="drift_reports")
        summary = {**result.scraps(), "reasons": result.reasons, "thresholds": t.to_dict()}
        summary.pop("mlflow_run_id", None)
        summary_path = Path(tmp, "monitor_summary.json")
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        mlflow.log_artifact(str(summary_path), artifact_path="drift_reports")
    mlflow.set_tags(
        {
            "drift_status": result.status,
            "data_source": result.data_source,
            "model_version": result.model_version,
            "drift_reasons": "; ".join(result.reasons)[:5000] or "none",
        }
    )


# --- figures for the notebook ---------------------------------------------------------------


def plot_column_scores(table: pd.DataFrame, top: int = 20) -> Any:
    """Bar chart of score / calibrated threshold per column (>= 1 is drift), top ``top`` columns."""
    from matplotlib.figure import Figure

    shown = table.head(top).iloc[::-1]
    ratio = shown["score"] / shown["threshold"]
    fig = Figure(figsize=(8, 0.28 * len(shown) + 1.2), layout="constrained")
    ax = fig.subplots()
    colors = np.where(shown["drifted"], "#c44e52", "#4c72b0")
    ax.barh(shown["column"], ratio, color=colors)
    ax.axvline(1.0, color="black", lw=1, ls="--", label="calibrated threshold")
    ax.set_xlabel("drift score / calibrated threshold (red: drifted)")
    ax.legend(loc="lower right")
    return fig


def plot_predictions(predictions: pd.DataFrame, threshold: float) -> Any:
    """Histograms of the predicted probabilities, reference vs batch, with the model threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, max(float(predictions[PROBA_COLUMN].max()), threshold) * 1.02, 40)
    for name, color in (("reference", "#4c72b0"), ("batch", "#dd8452")):
        values = predictions.loc[predictions["set"] == name, PROBA_COLUMN]
        ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=name)
    ax.axvline(threshold, color="black", lw=1, ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="predicted probability of readmission", ylabel="density")
    ax.legend()
    return fig


__all__ = [
    "DRIFT_COLUMNS",
    "DRIFT_DETECTED",
    "NO_DRIFT",
    "Calibration",
    "BatchTooSmallError",
    "MIN_BATCH_ROWS",
    "ModelSchemaError",
    "MonitorResult",
    "PreparedReference",
    "RawSchemaError",
    "ReferenceScorer",
    "Thresholds",
    "calibrate",
    "cap_tails",
    "check_model",
    "column_distance",
    "column_scores",
    "data_drift_report",
    "decide",
    "default_model_reference",
    "monitor",
    "performance_metrics",
    "performance_report",
    "plot_column_scores",
    "plot_predictions",
    "prediction_drift_report",
    "prepare_reference",
    "tail_caps",
]
