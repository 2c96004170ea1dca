"""The monitor's verdict on a batch and the record of it.

:func:`decide` turns the three monitored signals into ``DRIFT_DETECTED`` or ``NO_DRIFT`` (a
notebook scrap the loop and the DAG branch on); :class:`MonitorResult` holds the decision with
its evidence and the values the drift-monitor notebook records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from healthpredict.core.constants import DRIFT_DETECTED, NO_DRIFT
from healthpredict.monitoring.calibration import Thresholds
from healthpredict.monitoring.policy import RetrainDecision
from healthpredict.monitoring.signals import PerformanceSignals


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


@dataclass
class MonitorResult:
    """Outcome of :func:`healthpredict.mlops.monitor.monitor`: the decision, its evidence and where it was recorded.

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
        performance_signals: Estimated and realised ROC AUC (None without labelled held-out
            rows).
        retrain: The retraining policy's decision and its reasons.
        new_labelled_rows: Labelled rows the model never learned from (as the loop said).
        evidently_workspace: What the Evidently workspace got (``N snapshots in <folder>``,
            ``failed: <cause>``, ``off``); None before it was written.
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
    performance_signals: PerformanceSignals | None = None
    retrain: RetrainDecision = field(default_factory=lambda: RetrainDecision(False))
    new_labelled_rows: int = 0
    evidently_workspace: str | None = None

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
            "evidently_workspace": self.evidently_workspace,
            "mlflow_run_id": self.mlflow_run_id,
            "batch_rows": int(self.batch_rows),
            "share_threshold": float(self.thresholds.share_threshold),
            "prediction_drift_threshold": float(self.thresholds.prediction_drift_threshold),
            "expected_false_alarm_rate": float(self.thresholds.expected_false_alarm_rate),
        }
        signals = self.performance_signals.as_dict() if self.performance_signals else {}
        out.update(
            {
                "retrain": bool(self.retrain.retrain),
                "retrain_triggers": list(self.retrain.triggers),
                "retrain_reasons": list(self.retrain.reasons),
                "estimated_roc_auc": signals.get("estimated_roc_auc"),
                "realised_roc_auc": signals.get("realised_roc_auc"),
                "reference_roc_auc": signals.get("reference_roc_auc"),
                "performance_signals": signals or None,
                "new_labelled_rows": int(self.new_labelled_rows),
                "estimated_tolerance": self.thresholds.estimated_tolerance,
            }
        )
        if self.performance is not None:
            out["performance"] = self.performance_metrics()
            out["performance_drop"] = self.performance_drop
            out["performance_tolerance"] = self.thresholds.performance_tolerance
        return out
