"""MLflow logging shared by the recorded runs: trials, prefixed metrics, figures, calibration."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from healthpredict.modeling import plots

if TYPE_CHECKING:
    import optuna

    from healthpredict.modeling.fitting import FittedModel


class TrialLogger:
    """Logs finished Optuna trials as nested MLflow runs under a parent run (one batch each)."""

    def __init__(self, parent_run_id: str, experiment_id: str) -> None:
        self.client = MlflowClient()
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id

    def __call__(self, trial: optuna.trial.FrozenTrial) -> None:
        """Create the trial's child run with its params, value, staged values and state."""
        start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "optuna.trial": str(trial.number),
                "optuna.state": trial.state.name,
            },
            run_name=f"trial-{trial.number:03d}",
        )
        stamp = end or int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in sorted(trial.params.items())]
        metrics = [
            Metric("val_roc_auc_staged", float(v), stamp, int(step))
            for step, v in sorted(trial.intermediate_values.items())
        ]
        if trial.value is not None:
            metrics.append(Metric("val_roc_auc", float(trial.value), stamp, 0))
        if trial.duration is not None:
            metrics.append(Metric("duration_s", trial.duration.total_seconds(), stamp, 0))
        tags = [RunTag("family", str(trial.params.get("family")))]
        if trial.state.name == "FAIL":
            tags.append(
                RunTag("fail_reason", str(trial.system_attrs.get("fail_reason", ""))[:4000])
            )
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(trial.state.name, "FAILED")
        self.client.set_terminated(run.info.run_id, status=status, end_time=end)


def log_metrics_prefixed(prefix: str, values: dict[str, float]) -> None:
    """Log the finite values of ``values`` as MLflow metrics named ``<prefix><key>``."""
    mlflow.log_metrics(
        {
            f"{prefix}{k}": float(v)
            for k, v in values.items()
            if v is not None and math.isfinite(float(v))
        }
    )


def log_figures(
    y_true: np.ndarray, proba: np.ndarray, threshold: float, importance: pd.DataFrame | None
) -> None:
    """Log the evaluation figures of one scored split under ``figures/`` of the active run."""
    figures = {
        "roc_pr.png": plots.roc_pr_curves(y_true, proba),
        "calibration.png": plots.calibration(y_true, proba),
        "confusion.png": plots.confusion(y_true, proba, threshold),
    }
    if importance is not None and len(importance):
        figures["importance.png"] = plots.importance_bar(importance)
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"figures/{name}")


def log_calibration(fitted: FittedModel) -> None:
    """Log the calibration choice of a refit model: method, reason, out-of-fold Brier scores."""
    choice = fitted.calibration
    mlflow.log_param("calibration", choice.method)
    mlflow.set_tag("calibration_reason", choice.reason[:5000])
    log_metrics_prefixed("val_cv_brier.", choice.cv_brier)
