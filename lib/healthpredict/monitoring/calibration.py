"""Calibrated drift thresholds: null drift scores of one reference and the thresholds they give.

A distance between two samples is never zero: its size under "no drift" shrinks like
``sqrt(1/n_batch + 1/n_reference)``, so Evidently's default 0.1 flags many columns of a small
batch that did not drift. And a stream is not a random sample: coding practice changes inside
the reference period itself. :func:`healthpredict.monitoring.nulls.calibrate` therefore measures the variation a monitor of a
time-ordered stream must tolerate: consecutive windows of held-out reference-period patients
(the model reference, disjoint from the drift reference), in encounter order, each scored as a
production batch would be (:mod:`healthpredict.monitoring.statistics`).
:meth:`Calibration.thresholds` turns those null scores into per-column thresholds, a
prediction-drift threshold and the realised and estimated ROC AUC tolerances, with a known
false-alarm budget and tolerances never narrower than sampling noise.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from healthpredict.monitoring.statistics import (
    upper_cut,
)
from healthpredict.monitoring.windows import (
    hanley_mcneil_se,
)

# Bump when the null procedure changes: old caches are then ignored. v3: time-ordered windows of
# held-out patients, estimated-performance nulls, parametric floors.
CALIBRATION_VERSION = 4
# Per-column scale of the null scores: a well-estimated quantile; the family-wise cut is found
# on the maximum of the scaled scores (single-step max-T), so extreme quantiles per column,
# which a few hundred null windows cannot estimate, are never needed.
_SCALE_QUANTILE = 0.95
# A column that never varies in the reference has null scores of 0; any change is then drift.
_MIN_SCALE = 1e-3
# Signal names (keys of ``Thresholds.expected_false_alarm`` and ``Thresholds.floors``).
DATA_DRIFT = "data_drift"
PREDICTION_DRIFT = "prediction_drift"
PERFORMANCE = "performance"
ESTIMATED_PERFORMANCE = "estimated_performance"


@dataclass
class Thresholds:
    """Thresholds of one decision and its expected false-alarm rate under "no drift".

    Attributes:
        per_column: Column -> drift-score threshold (drift when score >= threshold).
        share_threshold: Share of drifted columns that means data drift.
        min_drifted_columns: The same as a number of columns.
        prediction_drift_threshold: Prediction drift when the score >= this.
        performance_tolerance: Largest realised ROC AUC drop (reference minus batch) that is no
            drift; None without labels.
        false_alarm_rate: Target false-alarm rate of the whole decision.
        alpha: False-alarm budget of each signal (the target split evenly).
        expected_false_alarm: Signal -> false-alarm rate measured on the null windows.
        calibrated: Which thresholds came from the calibration (the rest were given).
        estimated_tolerance: Largest drop of the expected ROC AUC (CBPE, calibrated
            probabilities; reference minus batch) that is no drift; None without labelled
            held-out rows.
        floors: Tolerance -> its parametric floor (``z_{1-alpha}`` times the standard error of
            the drop for the batch's size): a tolerance is never below it.
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
    floors: dict[str, float] = field(default_factory=dict)

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
            "estimated_tolerance": self.estimated_tolerance,
            "floors": dict(self.floors),
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


def _tolerance(
    drops: np.ndarray, alpha: float, floor: float, given: float | None
) -> tuple[float, float]:
    """Calibrated (or given) tolerance on ROC AUC drops, and its null false-alarm rate."""
    drops = drops[np.isfinite(drops)]
    if given is not None:
        tol = float(given)
    else:
        cut = upper_cut(drops, alpha) if len(drops) else 0.0
        tol = max(cut, floor if math.isfinite(floor) else 0.0, 0.0)
    return tol, float(np.mean(drops > tol)) if len(drops) else 0.0


@dataclass
class Calibration:
    """Null drift scores of one reference at one batch size, from which thresholds derive.

    Attributes:
        batch_size: Rows per monitored batch the scores are scaled to.
        columns: Monitored columns, in the order of ``feature_null``'s columns.
        feature_null: ``(n_windows, n_columns)`` column drift scores of no-drift windows.
        prediction_null: ``(n_windows,)`` prediction-drift scores of no-drift windows.
        performance_null: ``(n_windows,)`` realised ROC AUC drops of no-drift windows, or None.
        estimated_null: ``(n_windows,)`` expected ROC AUC (CBPE) drops of no-drift windows, or
            None (no labels to calibrate the probabilities with).
        feature_noise_null: ``(n_null, n_columns)`` column scores of random whole-patient
            batches of the drift reference against its rest: sampling noise alone, with a tail
            many independent draws estimate well (None: windows only).
        prediction_noise_null: ``(n_null,)`` prediction-drift scores of random whole-patient
            batches of the held-out rows against their rest (None: windows only).
        meta: Sizes, scales, windows and the figures behind the parametric floors.
        from_cache: Whether this object was read from the cache instead of computed.
    """

    batch_size: int
    columns: list[str]
    feature_null: np.ndarray
    prediction_null: np.ndarray
    performance_null: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    estimated_null: np.ndarray | None = None
    feature_noise_null: np.ndarray | None = None
    prediction_noise_null: np.ndarray | None = None

    @property
    def n_null(self) -> int:
        """Number of null windows."""
        return int(self.feature_null.shape[0])

    def floors(self, alpha: float) -> dict[str, float]:
        """Parametric floors of the two tolerances at a per-signal budget ``alpha``.

        ``z_{1-alpha}`` times the standard error of a drop between the reference and a batch of
        ``batch_size`` rows: Hanley-McNeil for the realised ROC AUC (positives at the held-out
        rows' rate), the delta method for the expected ROC AUC
        (:func:`~healthpredict.monitoring.windows.expected_auc_influence_variance`); the
        reference's own error is added in quadrature (both sides are samples).
        """
        z = float(norm.ppf(1 - alpha))
        m, n = self.batch_size, self.meta.get("model_reference_rows", 0)
        out: dict[str, float] = {}
        auc, rate = self.meta.get("reference_roc_auc"), self.meta.get("positive_rate")
        if self.performance_null is not None and auc is not None and rate is not None:
            se_b = hanley_mcneil_se(auc, m * rate, m * (1 - rate))
            se_r = hanley_mcneil_se(auc, n * rate, n * (1 - rate))
            out[PERFORMANCE] = z * math.hypot(se_b, se_r)
        var = self.meta.get("expected_auc_influence_variance")
        if self.estimated_null is not None and var is not None and n:
            out[ESTIMATED_PERFORMANCE] = z * math.sqrt(var * (1 / m + 1 / n))
        return out

    def thresholds(
        self,
        false_alarm_rate: float = 0.05,
        *,
        labelled: bool = False,
        share_threshold: float | None = None,
        prediction_drift_threshold: float | None = None,
        performance_tolerance: float | None = None,
        estimated_tolerance: float | None = None,
    ) -> Thresholds:
        """Thresholds whose signals raise a false alarm on at most ``false_alarm_rate`` batches.

        The target is split evenly over the signals in use: data drift, prediction drift, the
        estimated ROC AUC drop (when the held-out rows had labels to calibrate probabilities
        with) and the realised ROC AUC drop (when ``labelled``). By the union bound any decision
        on a subset of them (the drift status, the retraining decision) stays under the target,
        whatever their dependence. For data drift, each column's null scores are divided by
        their 95th percentile; with ``k`` the number of columns that make data drift
        (``ceil(share_threshold * n_columns)``, 1 by default), the cut ``c`` is the
        ``1 - alpha`` point of the k-th largest scaled score over the null windows, and column
        ``j``'s threshold is ``c`` times its 95th percentile (single-step max-T: correlated
        columns are accounted for without extreme per-column quantiles). Each tolerance is the
        ``1 - alpha`` point of its null drops, never below its parametric floor
        (:meth:`floors`): overlapping windows estimate the quantile from few independent ones.

        Args:
            false_alarm_rate: Target share of no-drift batches reported as drift, in (0, 1).
            labelled: Whether realised performance is judged (the batch, or batches whose labels
                arrived since, have labels).
            share_threshold: Share of drifted columns meaning data drift; None means one column.
                Per-column thresholds are calibrated for whichever share is used.
            prediction_drift_threshold: Fixed threshold instead of the calibrated one.
            performance_tolerance: Fixed realised ROC AUC tolerance instead of the calibrated one.
            estimated_tolerance: Fixed estimated ROC AUC tolerance instead of the calibrated one.

        Returns:
            The thresholds and their measured null false-alarm rates.
        """
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        k, share = _drifted_columns_needed(share_threshold, len(self.columns))
        use_perf = labelled and self.performance_null is not None
        use_est = self.estimated_null is not None
        alpha = false_alarm_rate / (2 + use_perf + use_est)

        per_column, expected = self._column_thresholds(k, alpha)
        # Like the columns': the cut must hold on the time-ordered windows (few independent
        # ones) and on sampling noise alone (many draws, a well-estimated tail).
        pred_thr = (
            max(upper_cut(n, alpha) for n in self._prediction_nulls())
            if prediction_drift_threshold is None
            else float(prediction_drift_threshold)
        )
        expected[PREDICTION_DRIFT] = float(np.mean(self.prediction_null >= pred_thr))

        floors = self.floors(alpha)
        tol = est_tol = None
        if use_perf:
            tol, expected[PERFORMANCE] = _tolerance(
                self.performance_null, alpha, floors.get(PERFORMANCE, 0.0), performance_tolerance
            )
        if use_est:
            est_tol, expected[ESTIMATED_PERFORMANCE] = _tolerance(
                self.estimated_null,
                alpha,
                floors.get(ESTIMATED_PERFORMANCE, 0.0),
                estimated_tolerance,
            )
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
                "estimated_tolerance": use_est and estimated_tolerance is None,
            },
            estimated_tolerance=est_tol,
            floors={name: floors[name] for name in floors if name in expected},
        )

    def _column_thresholds(self, k: int, alpha: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per-column thresholds for data drift at ``k`` columns, and their null alarm rate.

        Each column's scale is the larger 95th percentile of its two nulls (time-ordered
        windows; random whole-patient batches) and the cut is the larger ``1 - alpha`` point of
        the k-th largest scaled score over either null (single-step max-T), so the threshold
        holds on both: the windows bring the coding changes of the period but few independent
        samples, the random batches the sampling noise with a well-estimated tail.
        """
        nulls = [self.feature_null]
        if self.feature_noise_null is not None:
            nulls.append(self.feature_noise_null)
        q95 = np.max([np.quantile(n, _SCALE_QUANTILE, axis=0) for n in nulls], axis=0)
        scale = np.maximum(q95, _MIN_SCALE)
        cut = max(upper_cut(-np.sort(-(n / scale), axis=1)[:, k - 1], alpha) for n in nulls)
        per_column = {c: float(cut * s) for c, s in zip(self.columns, scale, strict=True)}
        n_drifted = (self.feature_null >= np.array([per_column[c] for c in self.columns])).sum(1)
        return per_column, {DATA_DRIFT: float(np.mean(n_drifted >= k))}

    def _prediction_nulls(self) -> list[np.ndarray]:
        nulls = [self.prediction_null]
        if self.prediction_noise_null is not None:
            nulls.append(self.prediction_noise_null)
        return nulls

    def to_bytes(self) -> bytes:
        """Serialise the null scores and metadata (``.npz``)."""
        buf = io.BytesIO()
        arrays = {"feature_null": self.feature_null, "prediction_null": self.prediction_null}
        if self.performance_null is not None:
            arrays["performance_null"] = self.performance_null
        if self.estimated_null is not None:
            arrays["estimated_null"] = self.estimated_null
        if self.feature_noise_null is not None:
            arrays["feature_noise_null"] = self.feature_noise_null
        if self.prediction_noise_null is not None:
            arrays["prediction_noise_null"] = self.prediction_noise_null
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
                estimated_null=data["estimated_null"] if "estimated_null" in data else None,
                feature_noise_null=(
                    data["feature_noise_null"] if "feature_noise_null" in data else None
                ),
                prediction_noise_null=(
                    data["prediction_noise_null"] if "prediction_noise_null" in data else None
                ),
            )
