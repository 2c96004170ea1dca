"""Time-ordered windows of held-out rows, their drift scores, and the noise of ROC AUC on them.

The no-drift batches a monitor of a time-ordered stream must tolerate are consecutive held-out
encounters of the reference period, not random draws; the calibration
(:mod:`healthpredict.monitoring.calibration`) scores them with the counting helpers of
:mod:`healthpredict.monitoring.statistics`. Pure statistics, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.monitoring.statistics import (
    CHUNK,
    NUMERIC_METHOD,
    auc_counts,
    batch_counts,
    jensen_shannon_counts,
    wasserstein_counts,
)


def time_ordered_windows(order_key: Any, batch_size: int, stride: int | None = None) -> np.ndarray:
    """Row positions of consecutive batches in time order (``(n_windows, batch_size)``).

    The no-drift batches a monitor of a time-ordered stream must tolerate: consecutive held-out
    encounters of the reference period (patients disjoint from the reference), in encounter
    order, so coding changes inside the period are part of "no drift". ``stride`` (default:
    ``batch_size``, disjoint windows) smaller than the batch gives overlapping windows.

    Raises:
        ValueError: Fewer rows than one batch, or a non-positive size or stride.
    """
    key = np.asarray(order_key)
    stride = batch_size if stride is None else stride
    if batch_size <= 0 or stride <= 0:
        raise ValueError(f"batch_size and stride must be positive, got {batch_size}, {stride}")
    if len(key) < batch_size:
        raise ValueError(f"{len(key)} rows cannot make a time-ordered batch of {batch_size}")
    order = np.argsort(key, kind="stable")
    starts = np.arange(0, len(key) - batch_size + 1, stride)
    return order[starts[:, None] + np.arange(batch_size)[None, :]]


def null_windows(order_key: Any, batch_size: int, max_windows: int) -> np.ndarray:
    """Time-ordered windows of ``batch_size`` rows, overlapping when the rows are few.

    The stride is the smallest that gives at most ``max_windows`` windows, but never more than
    ``batch_size`` (windows never skip rows: a large held-out set gives more, disjoint, windows),
    and the last window ends at the last row, so every row is in some window.
    """
    key = np.asarray(order_key)
    if max_windows < 1:
        raise ValueError(f"max_windows must be positive, got {max_windows}")
    span = max(len(key) - batch_size, 0)
    stride = max(1, min(batch_size, math.ceil(span / max(max_windows - 1, 1))))
    windows = time_ordered_windows(key, batch_size, stride)
    if span % stride:  # the strides stopped short of the end: one more window, ending there
        order = np.argsort(key, kind="stable")
        windows = np.vstack([windows, order[span:]])
    return windows


def external_window_scores(
    reference: pd.Series, held_out: pd.Series, method: str, idx: np.ndarray
) -> np.ndarray:
    """Score of each window (row positions ``idx`` into ``held_out``) against the whole reference.

    For held-out rows disjoint from the reference: exactly the production comparison of a batch
    with the reference, for one column.
    """
    ref, held = reference.reset_index(drop=True), held_out.reset_index(drop=True)
    if method == NUMERIC_METHOD:
        values = pd.concat([ref, held], ignore_index=True).to_numpy(float)
        support, codes = np.unique(values, return_inverse=True)
    else:
        codes, uniques = pd.factorize(
            pd.concat([ref, held], ignore_index=True).astype(str), sort=True
        )
        support = np.arange(len(uniques), dtype=float)
    k = len(support)
    if k <= 1:
        return np.zeros(idx.shape[0])
    ref_counts = np.bincount(codes[: len(ref)], minlength=k)[None, :]
    held_codes = codes[len(ref) :]
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start : start + CHUNK]
        cur = batch_counts(held_codes, part, k)
        if method == NUMERIC_METHOD:
            out[start : start + len(part)] = wasserstein_counts(ref_counts, cur, support)
        else:
            out[start : start + len(part)] = jensen_shannon_counts(ref_counts, cur)
    return out


def null_expected_auc_drops(proba: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Expected ROC AUC (CBPE, from calibrated ``proba``) of the rest minus that of each window.

    The same quantity as :func:`healthpredict.monitoring.estimation.expected_roc_auc` (each row
    a positive with probability ``p``; ties form one step), computed for all windows at once from
    counts of each distinct probability.
    """
    support, codes = np.unique(np.asarray(proba, dtype=float), return_inverse=True)
    k = len(support)
    total = np.bincount(codes, minlength=k)
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start : start + CHUNK]
        cur = batch_counts(codes, part, k)
        rest = total[None, :] - cur
        auc_cur = auc_counts(cur * support, cur * (1 - support))
        auc_rest = auc_counts(rest * support, rest * (1 - support))
        out[start : start + len(part)] = auc_rest - auc_cur
    return out


def hanley_mcneil_se(auc: float, n_pos: float, n_neg: float) -> float:
    """Standard error of a ROC AUC on ``n_pos`` positives and ``n_neg`` negatives (Hanley-McNeil).

    Hanley & McNeil (1982), Radiology 143:29-36, with their exponential approximations of the
    two pair probabilities; NaN when either class is empty.
    """
    if n_pos <= 0 or n_neg <= 0 or not math.isfinite(auc):
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


def expected_auc_influence_variance(proba: np.ndarray) -> float:
    """Variance of the influence function of the expected ROC AUC (CBPE) at calibrated ``proba``.

    The expected AUC is ``U / (P Q)`` with ``U`` the mean over row pairs of
    ``p_i (1 - p_j) [p_i > p_j]`` (ties half), ``P`` the mean of ``p`` and ``Q`` that of
    ``1 - p``; by the delta method its variance on ``n`` rows drawn like these is this value
    divided by ``n``: a parametric sampling error for a batch of any size.
    """
    p = np.asarray(proba, dtype=float)
    support, codes, counts = np.unique(p, return_inverse=True, return_counts=True)
    n = len(p)
    pos_w, neg_w = counts * support / n, counts * (1 - support) / n
    neg_below = np.cumsum(neg_w) - neg_w / 2  # mean of (1 - p_j) [p_j < v] + ties half
    pos_above = pos_w.sum() - np.cumsum(pos_w) + pos_w / 2  # mean of p_i [p_i > v] + ties half
    big_p, big_q = pos_w.sum(), neg_w.sum()
    if big_p <= 0 or big_q <= 0:
        return math.nan
    u = float((pos_w * neg_below).sum())
    auc = u / (big_p * big_q)
    g = support * neg_below + (1 - support) * pos_above  # projection of U on one row
    infl = (g - 2 * u) / (big_p * big_q) - auc * (support - big_p) / big_p
    infl -= auc * ((1 - support) - big_q) / big_q
    return float(np.sum(counts * infl**2) / n)
