"""The reference a batch is monitored against, prepared once and cached.

Per reference file, held-out rows, model version and batch size: the engineered features with
capped numeric tails, the model's predictions on the held-out rows, and the calibration (null
drift scores). Files are keyed by content under ``<storage>/drift_cache/``, so a changed
reference, held-out set or model version never reuses stale work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import PROBA_COLUMN, REFERENCE_SPLIT
from healthpredict.core.settings import get_settings
from healthpredict.data.schema import TARGET, make_target
from healthpredict.data.uci import read_raw_csv
from healthpredict.modeling.features import clean_data, engineer_features
from healthpredict.monitoring.calibration import CALIBRATION_VERSION, Calibration
from healthpredict.monitoring.estimation import ProbabilityCalibrator
from healthpredict.monitoring.nulls import ModelReference, calibrate
from healthpredict.monitoring.statistics import cap_tails, tail_caps

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

# Columns of the held-out predictions frame (besides constants.PROBA_COLUMN).
LABEL_COLUMN = "prediction"
TARGET_COLUMN = "target"
GROUP_COLUMN = "patient_nbr"
ORDER_COLUMN = "encounter_id"  # time order of the rows: null windows are consecutive encounters
# Splits of a prepared folder from the reference's period that the model was not trained on.
HELD_OUT_SPLITS = ("validation", "test")


def default_model_reference(reference_uri: str) -> list[str]:
    """Held-out rows for prediction drift and performance, next to a prepared reference.

    A model scores its own training rows better than new ones (in-sample predictions are more
    extreme for trees), so comparing a batch's predictions with predictions on the training
    reference would report drift on every batch. When the reference is the ``initial_train``
    split of a prepared folder, its ``validation`` and ``test`` splits (same period, patients
    not trained on) are used; otherwise the reference itself.
    """
    name, folder = _split_uri(reference_uri)
    if name == f"{REFERENCE_SPLIT}.csv":
        held_out = [layout.split_csv(split, folder) for split in HELD_OUT_SPLITS]
        if all(storage.exists(u) for u in held_out):
            return held_out
    return [reference_uri]


def reference_info(reference_uri: str) -> dict[str, Any]:
    """Data source and banner of a reference from the manifest of its prepared folder, if any."""
    _, folder = _split_uri(reference_uri)
    manifest_uri = layout.manifest(folder)
    try:
        manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None
    except (storage.StorageError, ValueError):
        manifest = None
    if not manifest:
        return {"data_source": None, "banner": None, "manifest": None}
    return {
        "data_source": manifest.get("data_source"),
        "banner": manifest.get("banner"),
        "manifest": manifest_uri,
    }


def _split_uri(uri: str) -> tuple[str, str]:
    """File name and folder of a local path or ``s3://`` URI (folder ``.`` when there is none)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    folder = uri[: len(uri) - len(name)].rstrip("/") or "."
    return name, folder


@dataclass
class PreparedReference:
    """Everything computed once per reference, held-out rows, model version and batch size.

    Attributes:
        features: Monitored feature reference: ``engineer_features`` output with numeric tails
            capped (:func:`~healthpredict.monitoring.statistics.cap_tails`), plus
            ``patient_nbr`` when known.
        caps: The caps, to apply to every batch.
        model_reference: Held-out rows' ``prediction_proba``, ``prediction`` and ``target``
            (with ``patient_nbr`` and ``encounter_id`` when known).
        calibration: Null drift scores at the batch size.
        reference_sha256: sha256 of the reference file.
        model_reference_sha256: sha256 of each held-out file.
        cache_dir: Where the cached files live.
        in_sample: Whether the held-out rows are the reference itself.
        from_cache: Which parts were read from the cache.
        calibrator: Isotonic calibrator of the model's probabilities, fitted on the held-out
            labels (None without labels of both classes): the estimated ROC AUC uses it.
    """

    features: pd.DataFrame
    caps: dict[str, tuple[float, float]]
    model_reference: pd.DataFrame
    calibration: Calibration
    reference_sha256: str
    model_reference_sha256: list[str]
    cache_dir: str
    in_sample: bool
    from_cache: dict[str, bool]
    calibrator: ProbabilityCalibrator | None = None

    @property
    def reference_roc_auc(self) -> float | None:
        """The model's realised ROC AUC on the held-out rows (None without labels)."""
        return self.calibration.meta.get("reference_roc_auc")

    @property
    def reference_expected_roc_auc(self) -> float | None:
        """Their expected ROC AUC from calibrated probabilities (CBPE; None without labels)."""
        return self.calibration.meta.get("reference_expected_roc_auc")


def _model_key(info: Any) -> str:
    run = (getattr(info, "run_id", "") or "")[:8]
    return f"{getattr(info, 'name', 'model')}-v{getattr(info, 'version', '0')}-{run}"


def _read_raw(uri: str) -> pd.DataFrame:
    return read_raw_csv(storage.read_bytes(uri), source=uri)


def target_name(info: Any) -> str:
    """The readmission target the model was trained for (its registry tag, else the setting)."""
    return getattr(info, "target", "") or get_settings().target


def predict_proba(pipeline: Pipeline, raw: pd.DataFrame) -> np.ndarray:
    """Positive-class probability of each raw encounter row."""
    return np.asarray(pipeline.predict_proba(raw)[:, 1], dtype=float)


def prepare_reference(
    reference_uri: str,
    model_reference_uris: Sequence[str],
    pipeline: Pipeline,
    info: Any,
    batch_size: int,
    *,
    n_null: int = 1000,
    seed: int = 0,
    cache_root: str | None = None,
) -> PreparedReference:
    """Engineered reference, held-out predictions and calibration, from the cache when possible.

    Layout: ``<cache_root>/v<version>/<reference sha>/features.parquet``; below it
    ``<held-out sha>/<model>-v<version>-<run>/predictions.parquet`` and
    ``calibration-n<batch>-b<n_null>-s<seed>-v<version>.npz``. Files are keyed by content, so a
    changed reference, held-out set or model version never reuses stale work.

    Args:
        reference_uri: Raw reference CSV (local or ``s3://``).
        model_reference_uris: Raw held-out CSVs for predictions and performance.
        pipeline: The production model.
        info: Its registry ``ModelInfo`` (name, version, run_id, target, threshold).
        batch_size: Rows of the monitored batch.
        n_null: Null batches of the calibration.
        seed: Seed of the calibration's random (sampling-noise) batches.
        cache_root: Cache folder (default ``<storage>/drift_cache``).

    Returns:
        The prepared reference, with which parts came from the cache.
    """
    cache_root = cache_root or layout.drift_cache()
    ref_sha = storage.sha256(reference_uri)
    model_shas = [storage.sha256(u) for u in model_reference_uris]
    ref_dir = storage.join(cache_root, f"v{CALIBRATION_VERSION}", ref_sha[:16])
    held_key = storage.sha256_bytes("|".join(model_shas).encode())[:16]
    model_dir = storage.join(ref_dir, held_key, _model_key(info))
    from_cache: dict[str, bool] = {}

    features, from_cache["features"] = _features(reference_uri, ref_dir)
    caps = tail_caps(features)
    features = cap_tails(features, caps)
    model_ref, from_cache["predictions"] = _predictions(
        model_reference_uris, pipeline, info, model_dir
    )
    calib_uri = storage.join(
        model_dir, f"calibration-n{batch_size}-b{n_null}-s{seed}-v{CALIBRATION_VERSION}.npz"
    )
    provenance = {
        "reference_sha256": ref_sha,
        "model_reference_sha256": model_shas,
        "model": _model_key(info),
    }
    in_sample = list(model_reference_uris) == [reference_uri]
    calibration = _read_calibration(calib_uri)
    held_features = None
    if calibration is None:
        if not in_sample:
            held_features, from_cache["held_out_features"] = _held_out_features(
                model_reference_uris, caps, storage.join(ref_dir, held_key)
            )
        calibration = calibrate(
            features,
            _model_reference(model_ref, held_features),
            batch_size,
            n_null=n_null,
            reference_order=features[ORDER_COLUMN].to_numpy() if ORDER_COLUMN in features else None,
        )
        calibration.meta.update(provenance)
        _write_calibration(calib_uri, calibration)
    from_cache["calibration"] = calibration.from_cache
    return PreparedReference(
        features=features,
        caps=caps,
        model_reference=model_ref,
        calibration=calibration,
        reference_sha256=ref_sha,
        model_reference_sha256=model_shas,
        cache_dir=model_dir,
        in_sample=in_sample,
        from_cache=from_cache,
        calibrator=_model_reference(model_ref).calibrator(),
    )


def _features(reference_uri: str, ref_dir: str) -> tuple[pd.DataFrame, bool]:
    """Engineered reference features (with the patient of each row), and whether cached."""
    features_uri = storage.join(ref_dir, "features.parquet")
    if storage.exists(features_uri):
        return storage.read_parquet(features_uri), True
    raw = _read_raw(reference_uri)
    features = engineer_features(clean_data(raw))
    _add_keys(features, raw)
    storage.write_parquet(features_uri, features.reset_index(drop=True))
    return features, False


def _add_keys(frame: pd.DataFrame, raw: pd.DataFrame) -> None:
    """Copy the patient and encounter of each raw row onto ``frame`` (same rows), when known."""
    for col in (GROUP_COLUMN, ORDER_COLUMN):
        if col in raw.columns:
            frame[col] = raw[col].to_numpy()


def _held_out_features(
    uris: Sequence[str], caps: dict[str, tuple[float, float]], held_dir: str
) -> tuple[pd.DataFrame, bool]:
    """Monitored features of the held-out rows (capped like the reference), and whether cached.

    Their time-ordered windows are the data-drift null (:func:`calibrate`).
    """
    uri = storage.join(held_dir, "features.parquet")
    if storage.exists(uri):
        return storage.read_parquet(uri), True
    raw = pd.concat([_read_raw(u) for u in uris], ignore_index=True)
    features = cap_tails(engineer_features(clean_data(raw)), caps)
    _add_keys(features, raw)
    storage.write_parquet(uri, features.reset_index(drop=True))
    return features, False


def _predictions(
    uris: Sequence[str], pipeline: Pipeline, info: Any, model_dir: str
) -> tuple[pd.DataFrame, bool]:
    """The model's predictions (and labels) on the held-out rows, and whether cached."""
    preds_uri = storage.join(model_dir, "predictions.parquet")
    if storage.exists(preds_uri):
        return storage.read_parquet(preds_uri), True
    raw = pd.concat([_read_raw(u) for u in uris], ignore_index=True)
    proba = predict_proba(pipeline, raw)
    model_ref = pd.DataFrame({PROBA_COLUMN: proba})
    _add_keys(model_ref, raw)
    model_ref[LABEL_COLUMN] = (proba >= float(info.threshold)).astype(int)
    if TARGET in raw.columns:
        model_ref[TARGET_COLUMN] = make_target(raw, target_name(info))
    storage.write_parquet(preds_uri, model_ref)
    return model_ref, False


def _model_reference(
    model_ref: pd.DataFrame, features: pd.DataFrame | None = None
) -> ModelReference:
    """The held-out predictions frame (and features) as the calibration takes it."""

    def column(name: str) -> np.ndarray | None:
        return model_ref[name].to_numpy() if name in model_ref else None

    return ModelReference(
        proba=model_ref[PROBA_COLUMN].to_numpy(),
        label=column(TARGET_COLUMN),
        groups=column(GROUP_COLUMN),
        order=column(ORDER_COLUMN),
        features=features,
    )


def _read_calibration(uri: str) -> Calibration | None:
    """The cached calibration, or None when there is none or it cannot be read."""
    if not storage.exists(uri):
        return None
    try:
        return Calibration.from_bytes(storage.read_bytes(uri))
    except (ValueError, KeyError, OSError) as exc:  # a damaged cache file is recomputed
        log.warning("ignoring unreadable calibration %s: %s", uri, exc)
        return None


def _write_calibration(uri: str, calibration: Calibration) -> None:
    """Cache the calibration, with a readable summary next to it."""
    storage.write_bytes(uri, calibration.to_bytes())
    # Default thresholds for unlabelled batches: what a reader of the cache wants to see.
    summary = {
        **calibration.meta,
        "batch_size": calibration.batch_size,
        "default_thresholds": calibration.thresholds(0.05).to_dict(),
    }
    storage.write_json(uri[: -len(".npz")] + ".json", summary)
