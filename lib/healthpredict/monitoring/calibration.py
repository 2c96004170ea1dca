"""Calibrated drift thresholds: null drift scores of one reference and the thresholds they give.

A distance between two samples is never zero: its size under "no drift" shrinks like
``sqrt(1/n_batch + 1/n_reference)``, so Evidently's default 0.1 flags many columns of a small
batch that did not drift. :func:`calibrate` measures the reference's own batch-to-batch variation
instead: it draws ``n_null`` random batches of the monitored size from the reference (whole
patients: a new batch brings new patients), scores each against the rest of the reference
(:mod:`healthpredict.monitoring.statistics`), and :meth:`Calibration.thresholds` turns those null
scores into per-column thresholds, a prediction-drift threshold and a performance tolerance such
that the whole decision has a known false-alarm rate.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.monitoring.statistics import (
    DRIFT_COLUMNS,
    METHODS,
    null_column_scores,
    null_indices,
    null_prediction_scores,
    subsample,
    upper_cut,
)

CALIBRATION_VERSION = 2  # bump when the null procedure changes: old caches are then ignored
# Per-column scale of the null scores: a well-estimated quantile; the family-wise cut is found
# on the maximum of the scaled scores (single-step max-T), so extreme quantiles per column,
# which 1,000 null batches cannot estimate, are never needed.
_SCALE_QUANTILE = 0.95
# A column that never varies in the reference has null scores of 0; any change is then drift.
_MIN_SCALE = 1e-3


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
        estimated_tolerance: Largest drop of the label-free expected ROC AUC that is noise
            (None: not calibrated).
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
    estimated_tolerance: float | None = None

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


def _drifted_columns_needed(share_threshold: float | None, n_columns: int) -> tuple[int, float]:
    """Columns that make data drift, and the share they are, for a share threshold (None: one)."""
    if share_threshold is None:
        return 1, 1 / n_columns
    if not 0 < share_threshold <= 1:
        raise ValueError(f"share_threshold must be in (0, 1], got {share_threshold}")
    return max(1, math.ceil(share_threshold * n_columns - 1e-9)), float(share_threshold)


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
        k, share = _drifted_columns_needed(share_threshold, len(self.columns))
        use_perf = labelled and self.performance_null is not None
        alpha = false_alarm_rate / (3 if use_perf else 2)

        per_column, expected = self._column_thresholds(k, alpha)
        pred_thr = (
            upper_cut(self.prediction_null, alpha)
            if prediction_drift_threshold is None
            else float(prediction_drift_threshold)
        )
        expected["prediction_drift"] = float(np.mean(self.prediction_null >= pred_thr))

        tol = None
        if use_perf:
            drops = self.performance_null[np.isfinite(self.performance_null)]
            tol = (
                max(upper_cut(drops, alpha), 0.0)
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

    def _column_thresholds(self, k: int, alpha: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per-column thresholds for data drift at ``k`` columns, and their null alarm rate.

        Each column's null scores are divided by their 95th percentile and the cut is the
        ``1 - alpha`` point of the k-th largest scaled score (single-step max-T).
        """
        scale = np.maximum(np.quantile(self.feature_null, _SCALE_QUANTILE, axis=0), _MIN_SCALE)
        scaled = self.feature_null / scale
        kth = -np.sort(-scaled, axis=1)[:, k - 1]
        cut = upper_cut(kth, alpha)
        per_column = {c: float(cut * s) for c, s in zip(self.columns, scale, strict=True)}
        n_drifted = (self.feature_null >= np.array([per_column[c] for c in self.columns])).sum(1)
        return per_column, {"data_drift": float(np.mean(n_drifted >= k))}

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


@dataclass(frozen=True)
class ModelReference:
    """The model's predictions on held-out reference rows: behind prediction drift and performance.

    Attributes:
        proba: Predicted probability of each held-out row.
        label: Their 0/1 labels, or None (no performance calibration).
        groups: Patient of each held-out row: null batches then hold out whole patients.
    """

    proba: np.ndarray
    label: np.ndarray | None = None
    groups: np.ndarray | None = None


def calibrate(
    reference: pd.DataFrame,
    model_reference: ModelReference,
    batch_size: int,
    *,
    n_null: int = 1000,
    seed: int = 0,
    columns: Sequence[str] = DRIFT_COLUMNS,
    methods: Mapping[str, str] = METHODS,
    groups: np.ndarray | None = None,
) -> Calibration:
    """Null drift scores of ``n_null`` random no-drift batches of ``batch_size`` rows.

    Each null batch is drawn from the reference (without replacement; whole patients when
    ``groups`` are given, see :func:`~healthpredict.monitoring.statistics.null_indices`) and
    scored against the rest of it, with the distances Evidently computes, vectorised over
    batches; see :func:`~healthpredict.monitoring.statistics.subsample` for how the scores are
    scaled to the production comparison.

    Args:
        reference: Engineered feature reference (``engineer_features`` output).
        model_reference: The model's predictions (and labels) on held-out reference rows.
        batch_size: Rows of a monitored batch.
        n_null: Number of null batches (at least 100).
        seed: Seed of the batch draws.
        columns: Monitored columns.
        methods: Column -> ``wasserstein`` or ``jensenshannon``.
        groups: Patient of each reference row: null batches then hold out whole patients.

    Returns:
        The calibration (null scores and metadata).

    Raises:
        ValueError: Fewer than 100 null batches, a non-positive batch size, or a reference (or
            held-out set) of fewer than 4 rows.
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
    m_feat, scale_feat = subsample(n_ref, batch_size)
    idx = null_indices(n_ref, m_feat, n_null, seed, groups)
    feature_null = np.column_stack(
        [null_column_scores(reference[c].reset_index(drop=True), methods[c], idx) for c in columns]
    )
    feature_null *= scale_feat

    proba = np.asarray(model_reference.proba, dtype=float)
    n_model = len(proba)
    m_pred, scale_pred = subsample(n_model, batch_size)
    idx_pred = null_indices(n_model, m_pred, n_null, seed + 1, model_reference.groups)
    label = None if model_reference.label is None else np.asarray(model_reference.label, int)
    pred_null, perf_null = null_prediction_scores(proba, label, idx_pred)
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
            "model_reference": model_reference.groups is not None,
        },
        "feature_pseudo_batch": m_feat,
        "feature_scale": scale_feat,
        "prediction_pseudo_batch": m_pred,
        "prediction_scale": scale_pred,
        "seconds": round(time.monotonic() - started, 3),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return Calibration(batch_size, columns, feature_null, pred_null, perf_null, meta)
