"""Drift distances between samples and their null distributions, computed from value counts.

Pure statistics, no I/O: the normed Wasserstein distance (numeric columns) and the
Jensen-Shannon distance (categorical columns) exactly as Evidently computes them, a scorer that
keeps one reference's counts, numeric tail caps, and the vectorised scores of random held-out
batches (data, predictions and ROC AUC) that the calibration turns into thresholds (the
time-ordered windows and the ROC AUC noise are in :mod:`healthpredict.monitoring.windows`).

The methods are fixed per column (those Evidently picks for references above 1,000 rows), so the
method never changes with the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.modeling.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES

NUMERIC_METHOD = "wasserstein"
CATEGORICAL_METHOD = "jensenshannon"
DRIFT_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
METHODS: dict[str, str] = {
    **{c: NUMERIC_METHOD for c in NUMERIC_FEATURES},
    **{c: CATEGORICAL_METHOD for c in CATEGORICAL_FEATURES},
}
_WASSERSTEIN_MIN_NORM = 0.001  # Evidently's floor of the reference std
# Numeric columns are capped at these reference quantiles before scoring: in the real data one
# patient with three encounters at 25 emergency visits (reference std 0.45) moves the normed
# Wasserstein distance of any batch holding him past the threshold on his own.
TAIL_QUANTILE = 0.001
CHUNK = 100  # null batches scored at once: bounds memory for columns with many values


# --- distances, computed from value counts ---------------------------------------------------


def wasserstein_counts(ref: np.ndarray, cur: np.ndarray, values: np.ndarray) -> np.ndarray:
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


def jensen_shannon_counts(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
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
    """The values a distance is computed on: missing ones (and infinities) dropped."""
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
        return float(wasserstein_counts(rc, cc, values))
    if method == CATEGORICAL_METHOD:
        codes, _ = pd.factorize(pd.concat([ref, cur], ignore_index=True), sort=True)
        k = int(codes.max()) + 1
        rc = np.bincount(codes[: len(ref)], minlength=k)
        cc = np.bincount(codes[len(ref) :], minlength=k)
        return float(jensen_shannon_counts(rc, cc))
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
                out[col] = float(wasserstein_counts(ref_counts, cur_counts, values.astype(float)))
            else:
                out[col] = float(jensen_shannon_counts(ref_counts, cur_counts))
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


def null_indices(
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


def subsample(n_total: int, batch_size: int) -> tuple[int, float]:
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


def batch_counts(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Counts of each code in each batch of ``idx`` (shape ``(batches, k)``)."""
    b = idx.shape[0]
    flat = (codes[idx] + (np.arange(b)[:, None] * k)).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k)


def null_column_scores(values: pd.Series, method: str, idx: np.ndarray) -> np.ndarray:
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
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start : start + CHUNK]
        cur = batch_counts(codes, part, k)
        ref = total[None, :] - cur
        if method == NUMERIC_METHOD:
            out[start : start + len(part)] = wasserstein_counts(ref, cur, support)
        else:
            out[start : start + len(part)] = jensen_shannon_counts(ref, cur)
    return out


def auc_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC from counts of positives and negatives per sorted score value (ties count half)."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, -1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((pos * (below + neg / 2)).sum(-1)) / (n_pos * n_neg)


def null_prediction_scores(
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
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start : start + CHUNK]
        cur = batch_counts(codes, part, k)
        ref = total[None, :] - cur
        drift[start : start + len(part)] = (
            wasserstein_counts(ref, cur, support) if k > 1 else np.zeros(len(part))
        )
        if label is not None:
            cur_pos = batch_counts(pos_codes, part, k + 1)[:, :k]
            ref_pos = total_pos[None, :] - cur_pos
            auc_cur = auc_counts(cur_pos, cur - cur_pos)
            auc_ref = auc_counts(ref_pos, ref - ref_pos)
            drop[start : start + len(part)] = auc_ref - auc_cur
    return drift, drop


def upper_cut(null: np.ndarray, alpha: float) -> float:
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


def effect_sizes(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    columns: Sequence[str] = DRIFT_COLUMNS,
    methods: Mapping[str, str] = METHODS,
) -> pd.DataFrame:
    """What moved in each column, and by how much (the drift table's ``effect`` columns).

    Numeric: the shift of the mean in reference standard deviations (``effect_size``), e.g.
    ``"mean 4.31 -> 5.02 (+0.42 SD)"``. Categorical: the category whose share moved most, with
    both shares; ``effect_size`` is that change of share, e.g.
    ``"discharge_disposition_id=25: 28.6% -> 0.0%"``.

    Returns:
        One row per column (index ``column``): ``effect_size`` (signed) and ``effect`` (text).
    """
    rows = {}
    for col in columns:
        ref, cur = _valid(reference[col]), _valid(batch[col])
        if not len(ref) or not len(cur):
            rows[col] = (math.nan, "no values")
        elif methods[col] == NUMERIC_METHOD:
            r, c = ref.to_numpy(float), cur.to_numpy(float)
            sd = max(float(np.std(r)), _WASSERSTEIN_MIN_NORM)
            shift = (float(c.mean()) - float(r.mean())) / sd
            rows[col] = (shift, f"mean {r.mean():.3g} -> {c.mean():.3g} ({shift:+.2f} SD)")
        else:
            share_r = ref.astype(str).value_counts(normalize=True)
            share_c = cur.astype(str).value_counts(normalize=True)
            both = pd.concat([share_r, share_c], axis=1).fillna(0.0)
            change = both.iloc[:, 1] - both.iloc[:, 0]
            top = change.abs().idxmax()
            rows[col] = (
                float(change[top]),
                f"{col}={top}: {both.iloc[:, 0][top]:.1%} -> {both.iloc[:, 1][top]:.1%}",
            )
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["effect_size", "effect"])
    out.index.name = "column"
    return out
