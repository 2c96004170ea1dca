"""What a monitoring run records in MLflow: params, metrics, reports, tags.

Called by :func:`healthpredict.mlops.monitor.monitor` inside the active MLflow run, once the
batch's evidence and decision are complete.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthpredict.core import storage
from healthpredict.core.portable import portable_tree
from healthpredict.monitoring.decision import MonitorResult

if TYPE_CHECKING:
    from healthpredict.mlops.monitor import MonitorPaths
    from healthpredict.monitoring.reference import PreparedReference


def log_monitoring_run(
    result: MonitorResult,
    snapshots: dict[str, Any],
    paths: MonitorPaths,
    prepared: PreparedReference,
    seed: int,
) -> None:
    """Params, metrics, reports and tags of the monitoring run (the active MLflow run)."""
    # mlflow costs ~3 s to import: only once a batch passed validation
    import mlflow

    t = result.thresholds
    # Paths as <storage>/...: the params read the same on every machine (portable records).
    mlflow.log_params(
        portable_tree(
            {
                "new_data_path": paths.new_data,
                "reference_data_path": paths.reference,
                "model_reference_path": ",".join(paths.held_out)[:6000],
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
                "labelled_data_path": ",".join(paths.labelled)[:6000],
                "new_labelled_rows": result.new_labelled_rows,
                "estimated_tolerance": t.estimated_tolerance,
            }
        )
    )
    mlflow.log_metrics(_metrics(result))
    _log_artifacts(result, snapshots)
    mlflow.set_tags(
        {
            "drift_status": result.status,
            "data_source": result.data_source,
            "model_version": result.model_version,
            "drift_reasons": "; ".join(result.reasons)[:5000] or "none",
            "retrain": str(result.retrain.retrain).lower(),
            "retrain_reasons": "; ".join(result.retrain.reasons)[:5000] or "none",
        }
    )


def _metrics(result: MonitorResult) -> dict[str, float]:
    """The run's metrics: the signals, the decision and, when labelled, the performance."""
    t = result.thresholds
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
    metrics["retrain_recommended"] = float(result.retrain.retrain)
    signals = result.performance_signals.as_dict() if result.performance_signals else {}
    for key in ("estimated_roc_auc", "expected_roc_auc", "expected_drop", "realised_roc_auc"):
        value = signals.get(key)
        if value is not None and math.isfinite(value):
            metrics[key] = float(value)
    return metrics


def _log_artifacts(result: MonitorResult, snapshots: dict[str, Any]) -> None:
    """The HTML reports, the drift table and a JSON summary, under ``drift_reports/``."""
    # mlflow costs ~3 s to import: only once a batch passed validation
    import mlflow

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
        summary = {
            **result.scraps(),
            "reasons": result.reasons,
            "thresholds": result.thresholds.to_dict(),
        }
        summary.pop("mlflow_run_id", None)
        summary_path = Path(tmp, "monitor_summary.json")
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        mlflow.log_artifact(str(summary_path), artifact_path="drift_reports")
