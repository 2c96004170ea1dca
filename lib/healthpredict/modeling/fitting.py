"""The final model: the prepared splits it learns from, its refit, calibration, threshold, tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from healthpredict.core.constants import SPLITS, STREAM_SPLIT
from healthpredict.core.gitinfo import git_commit
from healthpredict.data.schema import make_target
from healthpredict.data.split import drop_unreadmittable, load_split, read_manifest
from healthpredict.modeling.evaluation import choose_threshold, classification_metrics
from healthpredict.modeling.models import make_pipeline, single_threaded
from healthpredict.modeling.risk_calibration import CalibrationChoice, calibrate_pipeline

# The splits a model is trained, tuned and tested on; the stream comes later, batch by batch.
MODEL_SPLITS = tuple(name for name in SPLITS if name != STREAM_SPLIT)


@dataclass
class FittedModel:
    """A pipeline refitted on the training rows and calibrated, its threshold and its scores.

    ``pipeline`` is the calibrated model that is logged and served; ``uncalibrated`` the same
    fitted steps without the map (kept to report what calibration changed).
    """

    family: str
    params: dict[str, Any]
    pipeline: Pipeline
    threshold: float
    val_metrics: dict[str, float]
    val_proba: np.ndarray
    calibration: CalibrationChoice
    uncalibrated: Pipeline


def fit_final(
    family: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    target: str,
    seed: int,
    target_recall: float | None = None,
) -> FittedModel:
    """Refit ``family``/``params`` on ``train``; calibrate it and choose the threshold on ``val``.

    The model never saw the validation rows, so its calibration map
    (:func:`~healthpredict.modeling.risk_calibration.calibrate_pipeline`) and the threshold on the
    calibrated risks are honest; the validation metrics are reported at that threshold.
    """
    raw = make_pipeline(family, params, seed=seed)
    y_val = make_target(val, target)
    with single_threaded():
        raw.fit(train, make_target(train, target))
        pipeline, calibration = calibrate_pipeline(raw, val, y_val)
        proba = pipeline.predict_proba(val)[:, 1]
    threshold = choose_threshold(y_val, proba, target_recall)
    return FittedModel(
        family,
        dict(params),
        pipeline,
        threshold,
        classification_metrics(y_val, proba, threshold),
        proba,
        calibration,
        raw,
    )


def load_training_splits(data_dir: str | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Manifest and the raw ``initial_train``, ``validation`` and ``test`` frames."""
    manifest = read_manifest(data_dir)
    frames = {
        name: drop_unreadmittable(load_split(name, data_dir)).reset_index(drop=True)
        for name in MODEL_SPLITS
    }
    return manifest, frames


def data_tags(manifest: dict) -> dict[str, str]:
    """MLflow tags naming the data: source, its sha256, split hashes, git commit."""
    tags = {
        "data_source": str(manifest.get("data_source", "unknown")),
        "data_sha256": str(manifest.get("source_csv_sha256", "")),
        "data_origin": str(manifest.get("source", "")),
        "schema_hash": str(manifest.get("schema_hash", "")),
        "git_commit": git_commit(),
    }
    for name, info in manifest.get("splits", {}).items():
        tags[f"data_sha256.{name}"] = str(info.get("sha256", ""))
    return tags
