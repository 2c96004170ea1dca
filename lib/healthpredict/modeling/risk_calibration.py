"""Calibrated risks: the refit model's scores mapped to probabilities on the validation split.

Class weighting (a search choice) and boosting distort probabilities: a champion searched with
``class_weight="balanced"`` had a test Brier score of 0.222 on the real data, worse than
predicting the base rate (0.108). So the refit model's scores on the validation rows, which it
never saw, are mapped to risks by Platt scaling (``sigmoid``) or isotonic regression, or left as
they are (``none``). The choice is the lowest Brier score *out of fold* over the validation rows
(folds grouped by patient): judged on the rows it was fitted on, isotonic regression would
always look best.

The map sits inside the logged pipeline: its last step becomes scikit-learn's
``CalibratedClassifierCV`` over the frozen estimator, so what is served, monitored and reported
is the calibrated risk, and the fast serving path compiles it like any other step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from healthpredict.modeling.features import PATIENT

CALIBRATION_METHODS = ("none", "sigmoid", "isotonic")
# Fewer validation positives (or negatives) than this: no map is fitted, the scores stay as
# they are (a map learnt from a handful of events would be noise).
MIN_CLASS_ROWS = 30
CALIBRATION_FOLDS = 5


@dataclass(frozen=True)
class CalibrationChoice:
    """Which map was chosen and why.

    Attributes:
        method: ``none``, ``sigmoid`` (Platt) or ``isotonic``.
        cv_brier: Out-of-fold Brier score on validation of each candidate (empty when skipped).
        reason: One sentence for the run record and the model card.
    """

    method: str
    cv_brier: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def choose_calibration(
    estimator, x_val: np.ndarray, y_val: np.ndarray, patients: np.ndarray
) -> CalibrationChoice:
    """Compare no map, Platt and isotonic by out-of-fold Brier score on the validation rows.

    Args:
        estimator: The fitted estimator (the pipeline's last step).
        x_val: The validation rows as the estimator sees them (encoded matrix).
        y_val: Their 0/1 labels.
        patients: Each row's patient: folds keep a patient's encounters together.
    """
    y_val = np.asarray(y_val).astype(int)
    n_pos = int(y_val.sum())
    if min(n_pos, len(y_val) - n_pos) < MIN_CLASS_ROWS:
        return CalibrationChoice(
            "none",
            reason=f"not calibrated: {n_pos} of {len(y_val)} validation rows are positive "
            f"(fewer than {MIN_CLASS_ROWS} of a class)",
        )
    frozen = FrozenEstimator(estimator)
    folds = GroupKFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=0)
    scores = {"none": _brier(y_val, estimator.predict_proba(x_val)[:, 1])}
    for method in CALIBRATION_METHODS[1:]:
        oof = cross_val_predict(
            CalibratedClassifierCV(frozen, method=method),
            x_val,
            y_val,
            groups=patients,
            cv=folds,
            method="predict_proba",
        )[:, 1]
        scores[method] = _brier(y_val, oof)
    method = min(scores, key=scores.get)
    listed = ", ".join(f"{m} {s:.4f}" for m, s in scores.items())
    return CalibrationChoice(
        method, scores, f"lowest out-of-fold Brier score on validation ({listed})"
    )


def calibrate_pipeline(
    pipeline: Pipeline, val: pd.DataFrame, y_val: np.ndarray
) -> tuple[Pipeline, CalibrationChoice]:
    """The fitted ``pipeline`` with its estimator calibrated on ``val`` (or as is, ``none``).

    Args:
        pipeline: Fitted ``Pipeline([("preprocess", ...), ("model", estimator)])``.
        val: Raw validation rows the pipeline never saw (with ``patient_nbr`` for the folds).
        y_val: Their 0/1 labels.

    Returns:
        A new pipeline sharing the fitted steps (the estimator wrapped in a fitted
        ``CalibratedClassifierCV``), and the choice.
    """
    preprocess, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    x_val = preprocess.transform(val)
    patients = val[PATIENT].to_numpy() if PATIENT in val.columns else np.arange(len(val))
    choice = choose_calibration(estimator, x_val, y_val, patients)
    if choice.method == "none":
        return pipeline, choice
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method=choice.method)
    calibrated.fit(x_val, np.asarray(y_val).astype(int))
    return Pipeline([*pipeline.steps[:-1], (pipeline.steps[-1][0], calibrated)]), choice
