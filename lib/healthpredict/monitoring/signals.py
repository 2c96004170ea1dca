"""The performance signals of one monitored batch: realised where labels arrived, else estimated.

Pure: takes the model's probabilities on its held-out reference rows (with labels), on the new
unlabelled batch and on the batches whose labels have just arrived, and returns the ROC AUC
levels and drops the retraining policy (:mod:`healthpredict.monitoring.policy`) weighs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring.estimation import (
    LabelledBatch,
    ProbabilityCalibrator,
    estimate_roc_auc,
    expected_roc_auc,
)


@dataclass(frozen=True)
class ArrivedBatch:
    """A monitored batch whose labels arrived: the model's probabilities and the labels."""

    name: str
    proba: np.ndarray
    label: np.ndarray


@dataclass
class PerformanceSignals:
    """ROC AUC levels of the model: on its reference, estimated for the batch, realised.

    Attributes:
        reference_roc_auc: Realised on the held-out reference rows.
        reference_expected: Expected (label-free) on the same rows.
        expected_roc_auc: Expected on the new batch (calibrated probabilities).
        expected_drop: Reference expected minus batch expected: the change the label-free
            signal sees (case mix), the policy's estimated-performance signal.
        estimated_roc_auc: The best estimate for the batch (:func:`estimate_roc_auc`: the
            realised level of the batches just labelled, moved by the expected change).
        realised_roc_auc: Pooled over the batches whose labels arrived (None: none did).
        realised_drop: Reference minus realised.
        realised_rows: Rows behind the realised figure.
        arrived: Per arrived batch: name, rows, positives, realised and expected ROC AUC.
    """

    reference_roc_auc: float
    reference_expected: float
    expected_roc_auc: float
    expected_drop: float
    estimated_roc_auc: float
    realised_roc_auc: float | None = None
    realised_drop: float | None = None
    realised_rows: int = 0
    arrived: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (scraps, MLflow)."""
        return dict(self.__dict__)


def _auc(label: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(label, proba)) if len(np.unique(label)) == 2 else math.nan


def performance_signals(
    reference_proba: Any,
    reference_label: Any,
    batch_proba: Any,
    arrived: Sequence[ArrivedBatch] = (),
) -> PerformanceSignals:
    """Realised and estimated ROC AUC of the model for one monitored batch.

    The calibrator is fitted on the reference rows, so expected ROC AUCs are on the scale of
    calibrated probabilities whatever the model's own calibration.

    Args:
        reference_proba: The model's probabilities on its held-out reference rows.
        reference_label: Their 0/1 labels.
        batch_proba: The model's probabilities on the new, unlabelled batch.
        arrived: Batches whose labels arrived since the last step (oldest first).
    """
    ref_p = np.asarray(reference_proba, dtype=float)
    ref_y = np.asarray(reference_label).astype(int)
    calibrator = ProbabilityCalibrator(ref_p, ref_y)
    reference_auc = _auc(ref_y, ref_p)
    reference_expected = expected_roc_auc(calibrator.transform(ref_p))
    expected_now = expected_roc_auc(calibrator.transform(batch_proba))
    rows = [
        {
            "name": b.name,
            "rows": len(b.label),
            "positives": int(np.sum(b.label)),
            "realised_roc_auc": _auc(b.label, b.proba),
            "expected_roc_auc": expected_roc_auc(calibrator.transform(b.proba)),
        }
        for b in arrived
    ]
    recent = [LabelledBatch(r["realised_roc_auc"], r["expected_roc_auc"], r["rows"]) for r in rows]
    estimated = estimate_roc_auc(expected_now, reference_auc, reference_expected, recent)
    signals = PerformanceSignals(
        reference_roc_auc=reference_auc,
        reference_expected=reference_expected,
        expected_roc_auc=expected_now,
        expected_drop=reference_expected - expected_now,
        estimated_roc_auc=estimated,
        arrived=rows,
    )
    if arrived:
        label = np.concatenate([b.label for b in arrived]).astype(int)
        realised = _auc(label, np.concatenate([b.proba for b in arrived]))
        if math.isfinite(realised):
            signals.realised_roc_auc = realised
            signals.realised_drop = reference_auc - realised
            signals.realised_rows = len(label)
    return signals
