"""The performance signals of one monitored batch: realised where labels arrived, else estimated.

Pure: takes the model's calibrator and reference figures, the new unlabelled batch's expected
ROC AUC and the labelled batches the model never learned from, and returns the ROC AUC levels and
drops the retraining policy (:mod:`healthpredict.monitoring.policy`) weighs.
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
        realised_roc_auc: On the newest labelled batch (None: none yet, or one class).
        realised_drop: Reference minus realised.
        realised_rows: Rows behind the realised figure.
        arrived: Per labelled batch: name, rows, positives, realised and expected ROC AUC.
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
    calibrator: ProbabilityCalibrator,
    reference_roc_auc: float,
    reference_expected: float,
    expected_now: float,
    labelled: Sequence[ArrivedBatch] = (),
) -> PerformanceSignals:
    """Realised and estimated ROC AUC of the model for one monitored batch.

    Args:
        calibrator: The model's probability calibrator (fitted on its held-out reference rows).
        reference_roc_auc: The model's realised ROC AUC on those rows.
        reference_expected: Their expected ROC AUC (calibrated probabilities).
        expected_now: The new, unlabelled batch's expected ROC AUC.
        labelled: Labelled batches the model never learned from, oldest first: the newest is
            the realised signal, the last ones set the estimate's level.
    """
    rows = [
        {
            "name": b.name,
            "rows": len(b.label),
            "positives": int(np.sum(b.label)),
            "realised_roc_auc": _auc(b.label, b.proba),
            "expected_roc_auc": expected_roc_auc(calibrator.transform(b.proba)),
        }
        for b in labelled
    ]
    recent = [LabelledBatch(r["realised_roc_auc"], r["expected_roc_auc"], r["rows"]) for r in rows]
    estimated = estimate_roc_auc(expected_now, reference_roc_auc, reference_expected, recent)
    signals = PerformanceSignals(
        reference_roc_auc=reference_roc_auc,
        reference_expected=reference_expected,
        expected_roc_auc=expected_now,
        expected_drop=reference_expected - expected_now,
        estimated_roc_auc=estimated,
        arrived=rows,
    )
    if rows and math.isfinite(rows[-1]["realised_roc_auc"]):
        signals.realised_roc_auc = rows[-1]["realised_roc_auc"]
        signals.realised_drop = reference_roc_auc - signals.realised_roc_auc
        signals.realised_rows = rows[-1]["rows"]
    return signals
