"""Performance without labels: calibrated probabilities, the expected ROC AUC, and the estimate.

:class:`ProbabilityCalibrator` maps the model's scores to calibrated probabilities (isotonic,
fitted on labelled held-out rows). :func:`expected_roc_auc` is confidence-based performance
estimation (the method of NannyML's CBPE): if the calibrated probabilities are right, each row
is a positive with probability ``p``, so the expected true- and false-positive counts above every
threshold, hence the ROC curve, follow from the probabilities alone. It sees changes of case mix;
it cannot see concept drift (the same patients readmitted at another rate), which only labels show.
:func:`estimate_roc_auc` therefore anchors on realised performance as soon as labels arrived and
lets the label-free signal move the estimate only by the change it can see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from healthpredict.core.constants import ESTIMATE_WINDOW_BATCHES


class ProbabilityCalibrator:
    """Isotonic map from model scores to calibrated probabilities, fitted on labelled rows."""

    def __init__(self, scores: Any, y_true: Any) -> None:
        scores = np.asarray(scores, dtype=float)
        y = np.asarray(y_true).astype(int)
        if len(scores) != len(y) or len(np.unique(y)) < 2:
            raise ValueError(
                "a calibrator needs scores and labels of equal length with both classes"
            )
        self._iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)

    def transform(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities of ``scores``."""
        return self._iso.predict(np.asarray(scores, dtype=float))


def expected_roc_auc(proba: Any) -> float:
    """ROC AUC a batch is expected to have if its (calibrated) probabilities are right (CBPE).

    At each threshold the expected true positives are the sum of ``p`` above it and the false
    positives the sum of ``1 - p``; the area under the expected curve is the estimate (ties of
    ``p`` form one step, as a tied score would).
    """
    p = np.asarray(proba, dtype=float)
    if len(p) == 0:
        return math.nan
    values, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=p)[::-1]  # highest probability first
    neg = np.bincount(inverse, weights=1 - p)[::-1]
    if pos.sum() <= 0 or neg.sum() <= 0:
        return math.nan
    tpr = np.concatenate([[0.0], np.cumsum(pos) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / neg.sum()])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


@dataclass(frozen=True)
class LabelledBatch:
    """A past batch of the current model whose labels arrived.

    Attributes:
        realised_roc_auc: ROC AUC measured with its labels.
        expected_roc_auc: Its label-free estimate (:func:`expected_roc_auc`) when it arrived.
        rows: Its size.
    """

    realised_roc_auc: float
    expected_roc_auc: float
    rows: int


def estimate_roc_auc(
    expected_now: float,
    reference_roc_auc: float,
    reference_expected: float,
    recent: Sequence[LabelledBatch] = (),
    window: int = ESTIMATE_WINDOW_BATCHES,
    shrinkage: float = 0.5,
    change_weight: float = 1.0,
) -> float:
    """The ROC AUC estimated for an unlabelled batch of the current model.

    The level comes from the last ``window`` labelled batches of this model (pooled, weighted by
    rows), or from the model's reference before any arrived; the label-free signal adds only the
    change in expected ROC AUC since those batches (case mix), which it can see.

    Defaults chosen on the first halves of the real stream (``benchmarks/bench_estimation.py``:
    a frozen model, and one refit every 5 batches; labels one batch late) and checked on the
    second halves: a batch's realised ROC AUC is noisy (bootstrap SD ~0.02 for 2,000 rows) and
    the concept drift it must follow is slow, so a long window (12 batches) averages the noise
    out, and the reference, worth half a batch, steadies the level of a model with only one or
    two labelled batches yet.

    Args:
        expected_now: :func:`expected_roc_auc` of the batch.
        reference_roc_auc: The model's realised ROC AUC on its reference rows.
        reference_expected: Their expected ROC AUC.
        recent: Labelled batches of this model, oldest first.
        window: How many of the last ones set the level (0: all of them).
        shrinkage: Weight of the reference in the level, in batches of the recent ones' mean
            size (0: the recent batches alone once one arrived).
        change_weight: Share of the change of expected ROC AUC added to the level.
    """
    if window < 0 or shrinkage < 0:
        raise ValueError(f"window and shrinkage must be >= 0, got {window}, {shrinkage}")
    usable = [
        b for b in recent if math.isfinite(b.realised_roc_auc) and math.isfinite(b.expected_roc_auc)
    ]
    usable = usable[-window:] if window > 0 else usable
    realised = [b.realised_roc_auc for b in usable] + [reference_roc_auc]
    expected = [b.expected_roc_auc for b in usable] + [reference_expected]
    rows = [float(b.rows) for b in usable]
    w = np.array(rows + [shrinkage * float(np.mean(rows)) if rows else 1.0])
    level = float(np.average(realised, weights=w))
    base = float(np.average(expected, weights=w))
    return level + change_weight * (expected_now - base)
