"""Measuring the no-drift nulls of one reference: the :class:`Calibration` of its monitor.

:func:`calibrate` scores consecutive windows of held-out reference-period patients (the model
reference, disjoint from the drift reference), in encounter order, as production batches would
be scored, plus random-batch sampling noise; :mod:`healthpredict.monitoring.calibration` turns
the scores into thresholds.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring.calibration import CALIBRATION_VERSION, Calibration
from healthpredict.monitoring.estimation import ProbabilityCalibrator, expected_roc_auc
from healthpredict.monitoring.statistics import (
    DRIFT_COLUMNS,
    METHODS,
    null_column_scores,
    null_indices,
    null_prediction_scores,
    subsample,
)
from healthpredict.monitoring.windows import (
    expected_auc_influence_variance,
    external_window_scores,
    null_expected_auc_drops,
    null_windows,
)


@dataclass(frozen=True)
class ModelReference:
    """The held-out reference-period rows: the model's predictions, and the null windows' source.

    Attributes:
        proba: Predicted probability of each held-out row.
        label: Their 0/1 labels, or None (no performance calibration).
        groups: Patient of each held-out row (recorded; windows follow time, not patients).
        order: Time order of the rows (``encounter_id``); None: the rows are in time order.
        features: Their monitored features (engineered, tails capped like the reference), or
            None: data-drift windows are then taken from the drift reference itself.
    """

    proba: np.ndarray
    label: np.ndarray | None = None
    groups: np.ndarray | None = None
    order: np.ndarray | None = None
    features: pd.DataFrame | None = None

    def calibrator(self) -> ProbabilityCalibrator | None:
        """Isotonic calibrator of the probabilities on these labels (None without both classes)."""
        if self.label is None or len(np.unique(self.label)) < 2:
            return None
        return ProbabilityCalibrator(self.proba, self.label)


def calibrate(
    reference: pd.DataFrame,
    model_reference: ModelReference,
    batch_size: int,
    *,
    n_null: int = 1000,
    columns: Sequence[str] = DRIFT_COLUMNS,
    methods: Mapping[str, str] = METHODS,
    reference_order: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> Calibration:
    """Null scores of time-ordered no-drift windows of held-out reference-period rows.

    Windows are consecutive held-out rows in encounter order (at most ``n_null`` of them,
    overlapping with a stride when the rows are few: :func:`~healthpredict.monitoring.
    windows.null_windows`), so coding changes inside the reference period count as "no
    drift". Data drift: each window of ``model_reference.features`` is scored against the whole
    drift reference, as a production batch is (without held-out features, windows of the
    reference itself are scored against its rest). Prediction drift and the realised and
    estimated ROC AUC drops: each window of the held-out rows against the rest of them. When a
    batch is larger than half the rows a window comes from, windows of that half are used and
    scores are rescaled to the production comparison
    (:func:`~healthpredict.monitoring.statistics.subsample`).

    Args:
        reference: Monitored drift reference (``engineer_features`` output, tails capped).
        model_reference: The held-out rows: predictions, labels, order and features.
        batch_size: Rows of a monitored batch.
        n_null: Largest number of null windows (at least 100).
        columns: Monitored columns.
        methods: Column -> ``wasserstein`` or ``jensenshannon``.
        reference_order: Time order of the reference rows, used only without held-out features.
        groups: Patient of each reference row: the sampling-noise null then draws whole
            patients (a new batch brings new patients; a patient's encounters look alike).
        seed: Seed of the sampling-noise null's random batches.

    Returns:
        The calibration (null scores and metadata).

    Raises:
        ValueError: ``n_null`` below 100, a non-positive batch size, fewer than 4 rows to take
            windows from, or held-out features whose length differs from the predictions'.
    """
    if n_null < 100:
        raise ValueError(
            f"n_null must be at least 100 for a usable null distribution, got {n_null}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.monotonic()
    columns = list(columns)
    proba = np.asarray(model_reference.proba, dtype=float)
    n_model = len(proba)
    held = model_reference.features
    if held is not None and len(held) != n_model:
        raise ValueError(
            f"the held-out features have {len(held)} rows but the predictions {n_model}"
        )
    held_order = np.arange(n_model) if model_reference.order is None else model_reference.order

    if held is not None:
        # Windows of held-out rows against the whole (disjoint) reference: no rest to leave.
        if n_model < 4:
            raise ValueError(f"the held-out set has {n_model} rows; calibration needs at least 4")
        m_feat = min(batch_size, max(1, n_model // 2))
        scale_feat = math.sqrt(
            (1 / batch_size + 1 / len(reference)) / (1 / m_feat + 1 / len(reference))
        )
        idx = null_windows(held_order, m_feat, n_null)
        feature_null = np.column_stack(
            [external_window_scores(reference[c], held[c], methods[c], idx) for c in columns]
        )
    else:
        m_feat, scale_feat = subsample(len(reference), batch_size)
        order = np.arange(len(reference)) if reference_order is None else reference_order
        idx = null_windows(order, m_feat, n_null)
        feature_null = np.column_stack(
            [
                null_column_scores(reference[c].reset_index(drop=True), methods[c], idx)
                for c in columns
            ]
        )
    feature_null *= scale_feat
    # Sampling noise alone, from many independent batches: the windows above are few
    # independent samples (a held-out set of N rows holds N / batch of them), too few for a tail.
    m_ref, scale_ref = subsample(len(reference), batch_size)
    noise_idx = null_indices(len(reference), m_ref, n_null, seed, groups)
    noise_null = scale_ref * np.column_stack(
        [
            null_column_scores(reference[c].reset_index(drop=True), methods[c], noise_idx)
            for c in columns
        ]
    )

    m_pred, scale_pred = subsample(n_model, batch_size)
    idx_pred = null_windows(held_order, m_pred, n_null)
    label = None if model_reference.label is None else np.asarray(model_reference.label, int)
    pred_null, perf_null = null_prediction_scores(proba, label, idx_pred)
    pred_null *= scale_pred
    noise_pred_idx = null_indices(n_model, m_pred, n_null, seed, model_reference.groups)
    pred_noise_null = scale_pred * null_prediction_scores(proba, None, noise_pred_idx)[0]
    if perf_null is not None:
        perf_null *= scale_pred
    meta: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "n_null": n_null,
        "windows": {"features": int(idx.shape[0]), "predictions": int(idx_pred.shape[0])},
        "window_source": "held_out" if held is not None else "reference",
        "ordered_by": "order key" if model_reference.order is not None else "row order",
        "reference_rows": len(reference),
        "model_reference_rows": n_model,
        "feature_pseudo_batch": m_feat,
        "feature_scale": scale_feat,
        "prediction_pseudo_batch": m_pred,
        "prediction_scale": scale_pred,
    }
    est_null = None
    calibrator = model_reference.calibrator()
    if calibrator is not None:
        calibrated = calibrator.transform(proba)
        est_null = null_expected_auc_drops(calibrated, idx_pred) * scale_pred
        meta.update(
            reference_roc_auc=float(roc_auc_score(label, proba)),
            reference_expected_roc_auc=expected_roc_auc(calibrated),
            positive_rate=float(label.mean()),
            expected_auc_influence_variance=expected_auc_influence_variance(calibrated),
        )
    meta["seconds"] = round(time.monotonic() - started, 3)
    meta["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["noise_null"] = {"batches": n_null, "seed": seed, "grouped": groups is not None}
    return Calibration(
        batch_size,
        columns,
        feature_null,
        pred_null,
        perf_null,
        meta,
        estimated_null=est_null,
        feature_noise_null=noise_null,
        prediction_noise_null=pred_noise_null,
    )
