"""The evidence on one batch against a prepared reference: its scores, tables and reports.

Everything the decision needs, computed without recording anything: the batch's engineered
features and predictions, the three Evidently reports with the calibrated thresholds, the
per-column drift table, and the reference-versus-batch prediction and performance tables.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from healthpredict.core.constants import PROBA_COLUMN
from healthpredict.data.schema import TARGET, make_target
from healthpredict.modeling.features import clean_data, engineer_features
from healthpredict.monitoring.calibration import Thresholds
from healthpredict.monitoring.estimation import expected_roc_auc
from healthpredict.monitoring.reference import (
    LABEL_COLUMN,
    TARGET_COLUMN,
    PreparedReference,
    predict_proba,
    target_name,
)
from healthpredict.monitoring.reports import (
    data_drift_report,
    performance_metrics,
    performance_report,
    prediction_drift_report,
    prediction_frame,
)
from healthpredict.monitoring.statistics import cap_tails

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    """One raw batch as it is compared with the reference.

    Attributes:
        features: Engineered features, numeric tails capped as the reference's.
        proba: The model's predicted probability of each row.
        target: The 0/1 labels, or None when the batch (or the held-out set) has none.
        threshold: The model's decision threshold on the probability.
        predictions: ``prediction_proba``, ``prediction`` and, when labelled, ``target``.
    """

    features: pd.DataFrame
    proba: np.ndarray
    target: np.ndarray | None
    threshold: float
    predictions: pd.DataFrame

    @property
    def labelled(self) -> bool:
        """Whether performance can be measured on the batch."""
        return self.target is not None


def score_batch(
    batch_raw: pd.DataFrame, pipeline: Pipeline, info: Any, prepared: PreparedReference
) -> ScoredBatch:
    """Engineer, cap and predict one raw batch with the production model.

    Args:
        batch_raw: The validated raw batch.
        pipeline: The production model.
        info: Its registry ``ModelInfo`` (threshold and target).
        prepared: The prepared reference (its caps, and whether its held-out rows have labels).

    Returns:
        The scored batch.
    """
    features = cap_tails(engineer_features(clean_data(batch_raw)), prepared.caps)
    proba = predict_proba(pipeline, batch_raw)
    labelled = TARGET in batch_raw.columns and TARGET_COLUMN in prepared.model_reference
    target = make_target(batch_raw, target_name(info)) if labelled else None
    threshold = float(info.threshold)
    return ScoredBatch(
        features=features,
        proba=proba,
        target=target,
        threshold=threshold,
        predictions=prediction_frame(proba, threshold, target),
    )


@dataclass
class Evidence:
    """What the reports show about one batch, before any decision.

    Attributes:
        snapshots: Report name (``data_drift``, ``prediction_drift``, ``performance``) -> its
            Evidently snapshot; no performance report without labels of both classes.
        drift_table: Per-column method, score, threshold and verdict, most drifted first.
        drifted_columns: The columns that drifted, most drifted first.
        prediction_drift_score: Normed Wasserstein distance of the probabilities.
        prediction_drift: Whether that score reached its threshold.
        prediction_table: Reference vs batch: mean probability and predicted positive rate.
        performance: Reference vs batch metrics and their change (None without labels).
        performance_drop: Reference minus batch ROC AUC (None without labels or when undefined).
        thresholds: The thresholds the reports tested against.
        expected_roc_auc: The batch's expected ROC AUC from its calibrated probabilities
            (CBPE, no labels needed); None when the held-out rows had no labels.
        estimated_drop: The held-out rows' expected ROC AUC minus the batch's: the drop the
            label-free estimate sees, to compare with ``thresholds.estimated_tolerance``.
    """

    snapshots: dict[str, Any]
    drift_table: pd.DataFrame
    drifted_columns: list[str]
    prediction_drift_score: float
    prediction_drift: bool
    prediction_table: pd.DataFrame
    performance: pd.DataFrame | None
    performance_drop: float | None
    thresholds: Thresholds
    expected_roc_auc: float | None = None
    estimated_drop: float | None = None

    @property
    def drifted_share(self) -> float:
        """Share of monitored columns that drifted."""
        return len(self.drifted_columns) / len(self.drift_table)


def gather_evidence(
    prepared: PreparedReference, batch: ScoredBatch, thresholds: Thresholds
) -> Evidence:
    """Build the Evidently reports of a scored batch and the tables read from them.

    Args:
        prepared: The prepared reference (features and held-out predictions).
        batch: The scored batch.
        thresholds: The calibrated (or given) thresholds the reports test against.

    Returns:
        The evidence on the batch.
    """
    snapshots: dict[str, Any] = {}
    snapshots["data_drift"], table = data_drift_report(
        prepared.features, batch.features, thresholds
    )
    snapshots["prediction_drift"], pred_score = prediction_drift_report(
        prepared.model_reference, batch.predictions, thresholds.prediction_drift_threshold
    )
    performance = drop = None
    if batch.labelled:
        performance, drop, snapshot = _performance(
            prepared.model_reference, batch, thresholds.performance_tolerance
        )
        if snapshot is not None:
            snapshots["performance"] = snapshot
    expected = estimated_drop = None
    if prepared.calibrator is not None and prepared.reference_expected_roc_auc is not None:
        expected = expected_roc_auc(prepared.calibrator.transform(batch.proba))
        if math.isfinite(expected):
            estimated_drop = float(prepared.reference_expected_roc_auc - expected)
    return Evidence(
        snapshots=snapshots,
        drift_table=table,
        drifted_columns=table.loc[table["drifted"], "column"].tolist(),
        prediction_drift_score=pred_score,
        prediction_drift=bool(pred_score >= thresholds.prediction_drift_threshold),
        prediction_table=prediction_table(prepared.model_reference, batch),
        performance=performance,
        performance_drop=drop,
        thresholds=thresholds,
        expected_roc_auc=expected,
        estimated_drop=estimated_drop,
    )


def prediction_table(model_reference: pd.DataFrame, batch: ScoredBatch) -> pd.DataFrame:
    """Mean probability and predicted positive rate, reference vs batch, and their change."""
    table = pd.DataFrame(
        {
            "reference": [
                float(model_reference[PROBA_COLUMN].mean()),
                float(model_reference[LABEL_COLUMN].mean()),
            ],
            "batch": [float(batch.proba.mean()), float(batch.predictions[LABEL_COLUMN].mean())],
        },
        index=pd.Index(["mean_probability", "predicted_positive_rate"], name="statistic"),
    )
    table["change"] = table["batch"] - table["reference"]
    return table


def _performance(
    model_reference: pd.DataFrame, batch: ScoredBatch, tolerance: float | None
) -> tuple[pd.DataFrame, float | None, Any]:
    """Performance table, ROC AUC drop and report (None with one class) of a labelled batch."""
    threshold = batch.threshold
    ref_m = performance_metrics(
        model_reference[TARGET_COLUMN], model_reference[PROBA_COLUMN], threshold
    )
    cur_m = performance_metrics(batch.target, batch.proba, threshold)
    performance = pd.DataFrame({"reference": ref_m, "batch": cur_m})
    performance.index.name = "metric"
    performance["change"] = performance["batch"] - performance["reference"]
    drop = ref_m["roc_auc"] - cur_m["roc_auc"]
    drop = None if not math.isfinite(drop) else float(drop)
    min_auc = (
        ref_m["roc_auc"] - tolerance
        if tolerance is not None and math.isfinite(ref_m["roc_auc"])
        else None
    )
    if len(np.unique(batch.target)) > 1:
        snapshot = performance_report(model_reference, batch.predictions, threshold, min_auc)
    else:  # Evidently fails on one class; the table says the ROC AUC is undefined
        log.warning("the batch's labels are all %s: no performance report", batch.target[0])
        snapshot = None
    return performance, drop, snapshot


def compared_predictions(model_reference: pd.DataFrame, batch: ScoredBatch) -> pd.DataFrame:
    """Predicted probabilities of the held-out rows and of the batch, ``set`` telling which."""
    return pd.concat(
        [
            pd.DataFrame(
                {"set": "reference", PROBA_COLUMN: model_reference[PROBA_COLUMN].to_numpy()}
            ),
            pd.DataFrame({"set": "batch", PROBA_COLUMN: batch.proba}),
        ],
        ignore_index=True,
    )
