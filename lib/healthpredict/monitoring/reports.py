"""Evidently reports of one batch: data drift, prediction drift and performance, and their HTML.

The reports get the calibrated thresholds, so the HTML shows what the decision used.
``import evidently`` costs about 9 s, so it happens inside the functions that build reports.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from healthpredict.core import storage
from healthpredict.core.constants import PROBA_COLUMN
from healthpredict.monitoring.calibration import Thresholds
from healthpredict.monitoring.reference import LABEL_COLUMN, TARGET_COLUMN
from healthpredict.monitoring.statistics import (
    CATEGORICAL_METHOD,
    METHODS,
    NUMERIC_METHOD,
    effect_sizes,
)

EVIDENTLY_DEFAULT_THRESHOLD = 0.1


def data_drift_report(
    reference: pd.DataFrame, batch: pd.DataFrame, thresholds: Thresholds
) -> tuple[Any, pd.DataFrame]:
    """Evidently data-drift report with the calibrated per-column thresholds, and its table.

    Returns:
        The Evidently snapshot and a table with one row per column: ``column``, ``type``,
        ``method``, ``score``, ``threshold``, ``drifted``, ``drifted_at_0.1`` (what Evidently's
        uncalibrated default would say), ``effect`` (what moved and by how much, e.g.
        ``"discharge_disposition_id=25: 28.6% -> 0.0%"`` or ``"mean 4.31 -> 5.02 (+0.42 SD)"``)
        and ``effect_size`` (the signed change of share, or of the mean in reference SDs),
        sorted by score relative to threshold.
    """
    # evidently costs ~9 s to import: only when a report is built
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(thresholds.per_column)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if METHODS[c] == NUMERIC_METHOD],
        categorical_columns=[c for c in columns if METHODS[c] == CATEGORICAL_METHOD],
    )
    preset = DataDriftPreset(
        columns=columns,
        per_column_method={c: METHODS[c] for c in columns},
        per_column_threshold=dict(thresholds.per_column),
        drift_share=thresholds.share_threshold,
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(batch[columns].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(reference[columns].reset_index(drop=True), definition),
    )
    rows = []
    for metric in snapshot.dict()["metrics"][1:]:
        config = metric["config"]
        if "column" not in config:
            continue
        score = float(metric["value"])
        threshold = float(config["threshold"])
        rows.append(
            {
                "column": config["column"],
                "type": "numeric" if config["method"] == NUMERIC_METHOD else "categorical",
                "method": config["method"],
                "score": score,
                "threshold": threshold,
                "drifted": bool(score >= threshold),
                "drifted_at_0.1": bool(score >= EVIDENTLY_DEFAULT_THRESHOLD),
            }
        )
    table = pd.DataFrame(rows)
    effects = effect_sizes(reference, batch, table["column"].tolist())
    table = table.join(effects, on="column")
    table = table.assign(_r=table["score"] / table["threshold"]).sort_values("_r", ascending=False)
    return snapshot, table.drop(columns="_r").reset_index(drop=True)


def prediction_frame(
    proba: np.ndarray, threshold: float, target: np.ndarray | None = None
) -> pd.DataFrame:
    """Predicted probabilities, the labels at ``threshold`` and, when given, the true labels."""
    frame = pd.DataFrame({PROBA_COLUMN: np.asarray(proba, dtype=float)})
    frame[LABEL_COLUMN] = (frame[PROBA_COLUMN] >= threshold).astype(int)
    if target is not None:
        frame[TARGET_COLUMN] = np.asarray(target, dtype=int)
    return frame


def prediction_drift_report(
    model_reference: pd.DataFrame, batch_pred: pd.DataFrame, drift_threshold: float
) -> tuple[Any, float]:
    """Evidently report on the predicted probabilities (calibrated threshold) and label rate.

    Returns:
        The snapshot and the prediction-drift score (normed Wasserstein distance).
    """
    # evidently costs ~9 s to import: only when a report is built
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import CategoryCount, MeanValue, ValueDrift

    cols = [PROBA_COLUMN, LABEL_COLUMN]
    definition = DataDefinition(
        numerical_columns=[PROBA_COLUMN], categorical_columns=[LABEL_COLUMN]
    )
    metrics = [
        ValueDrift(column=PROBA_COLUMN, method=NUMERIC_METHOD, threshold=drift_threshold),
        # No default tests: their "within 10% of the reference" rule is not calibrated.
        MeanValue(column=PROBA_COLUMN, tests=[]),
        CategoryCount(column=LABEL_COLUMN, category=1, tests=[]),
    ]
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(batch_pred[cols].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(
            model_reference[cols].reset_index(drop=True), definition
        ),
    )
    score = float(snapshot.dict()["metrics"][0]["value"])
    return snapshot, score


def performance_report(
    model_reference: pd.DataFrame, batch_pred: pd.DataFrame, threshold: float, min_auc: float | None
) -> Any:
    """Evidently ClassificationPreset at the model's threshold, batch against held-out rows.

    Args:
        model_reference: Held-out ``prediction_proba`` and ``target``.
        batch_pred: The batch's ``prediction_proba`` and ``target``.
        threshold: The model's decision threshold.
        min_auc: Lowest batch ROC AUC that is no drift (reference minus tolerance), shown as the
            report's ROC AUC test; None leaves the test out.
    """
    # evidently costs ~9 s to import: only when a report is built
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset
    from evidently.tests import gte

    cols = [PROBA_COLUMN, TARGET_COLUMN]
    definition = DataDefinition(
        numerical_columns=[PROBA_COLUMN],
        categorical_columns=[TARGET_COLUMN],
        classification=[
            BinaryClassification(target=TARGET_COLUMN, prediction_probas=PROBA_COLUMN, pos_label=1)
        ],
    )
    # Only the calibrated ROC AUC test; the default "within 20% of the reference" tests of the
    # other metrics are not calibrated and would contradict the decision.
    none: list = []
    preset = ClassificationPreset(
        probas_threshold=threshold,
        rocauc_tests=[gte(min_auc)] if min_auc is not None else none,
        accuracy_tests=none, precision_tests=none, recall_tests=none, f1score_tests=none,
        logloss_tests=none, tpr_tests=none, tnr_tests=none, fpr_tests=none, fnr_tests=none,
    )  # fmt: skip
    return Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(batch_pred[cols].reset_index(drop=True), definition),
        reference_data=Dataset.from_pandas(
            model_reference[cols].reset_index(drop=True), definition
        ),
    )


def performance_metrics(
    target: np.ndarray, proba: np.ndarray, threshold: float
) -> dict[str, float]:
    """ROC AUC, precision, recall, F1 (at ``proba >= threshold``) and rates of one labelled set."""
    target = np.asarray(target, dtype=int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    both = len(np.unique(target)) == 2
    return {
        "roc_auc": float(roc_auc_score(target, proba)) if both else math.nan,
        "precision": float(precision_score(target, pred, zero_division=0)),
        "recall": float(recall_score(target, pred, zero_division=0)),
        "f1": float(f1_score(target, pred, zero_division=0)),
        "positive_rate": float(target.mean()) if len(target) else math.nan,
        "predicted_positive_rate": float(pred.mean()) if len(pred) else math.nan,
    }


def save_html(snapshot: Any, uri: str) -> str:
    """Write an Evidently snapshot's HTML to a local path or ``s3://`` URI; returns the URI."""
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, Path(uri).name)
            snapshot.save_html(str(local))
            storage.write_bytes(uri, local.read_bytes())
        return uri
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(uri)
    return uri
