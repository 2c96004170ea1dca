"""The training DAG's steps: prepared data, registration check, retraining outcome.

The notebooks (``01_eda``, ``02_train_hpo``, ``04_retrain``) run through
:mod:`healthpredict.runs.papermill_task`; these functions check and record what they did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.constants import CHAMPION
from healthpredict.core.settings import get_settings
from healthpredict.mlops import registry, tracking
from healthpredict.runs.papermill_task import read_run_scraps, safe_name


def retrain_result_uri(run_id: str, root: str | None = None) -> str:
    """Where the training DAG leaves the outcome of a retraining run with this run id."""
    return layout.retrain_record(safe_name(run_id, 200), root)


def ensure_prepared_data(
    prepare: bool,
    *,
    source: str | None = None,
    n_synthetic: int = 30_000,
    initial_fraction: float = 0.2,
    target: str = "<30",
) -> dict[str, Any]:
    """Prepare the splits when asked; in any case check they exist and summarise them.

    Raises:
        FileNotFoundError: ``prepare`` is off and no prepared data (manifest) exists.
    """
    # the split module loads scikit-learn (seconds, measured): not when the DAG is parsed
    from healthpredict.data.split import SplitParams, read_manifest
    from healthpredict.data.split import prepare as prepare_splits

    data_dir = layout.processed_data()
    if prepare:
        params = SplitParams(initial_fraction=initial_fraction, target=target)
        manifest = prepare_splits(source, params=params, n_synthetic=n_synthetic)
    else:
        try:
            manifest = read_manifest(data_dir)
        except storage.StorageError:
            raise FileNotFoundError(
                f"no prepared data at {data_dir} (manifest.json missing): trigger with "
                "prepare_data=true, or run `healthpredict data prepare` first"
            ) from None
    return {
        "data_dir": data_dir,
        "data_source": manifest["data_source"],
        "rows": {name: split["rows"] for name, split in manifest["splits"].items()},
    }


def check_registration(prepared: Mapping[str, Any], model_name: str | None = None) -> dict:
    """Check that the training run registered its model and that the champion is sound.

    Raises:
        healthpredict.runs.NotebookRunError: Required scraps are missing.
        healthpredict.modeling.runtime.model_meta.ModelNotFoundError: The version the run reported does not
            exist.
        RuntimeError: The run says it promoted its model, but the champion is another version.
    """
    # MLflow's own default would be ./mlflow.db in whatever folder the task runs in.
    tracking.setup_mlflow()
    scraps = read_run_scraps(prepared)
    name = model_name or get_settings().model_name
    info = registry.get_model_info(f"models:/{name}/{scraps['model_version']}")
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"registered model {name!r} has no champion after training")
    if scraps["promoted"] and champion != info.version:
        raise RuntimeError(
            f"the run promoted version {info.version} but the champion is version {champion}"
        )
    return {
        "model_version": info.version,
        "promoted": bool(scraps["promoted"]),
        "champion_version": champion,
        "test_roc_auc": scraps["test_roc_auc"],
        "run_dir": prepared["run_dir"],
    }


def as_uri_list(value: str | Sequence[str] | None) -> list[str]:
    """``retraining_data_path`` as a list: one URI, a comma-separated string, or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value if str(v).strip()]


def record_retraining(prepared: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Read the retrain run's decision and leave it where the monitoring DAG looks for it.

    Raises:
        healthpredict.runs.NotebookRunError: Required scraps are missing.
    """
    scraps = read_run_scraps(prepared)
    outcome = {
        "decision": scraps["decision"],
        "promoted": bool(scraps["promoted"]),
        "reason": scraps["reason"],
        "challenger_version": scraps["challenger_version"],
        "champion_version": scraps["champion_version"],
        "mlflow_run_id": scraps["mlflow_run_id"],
        "holdout_path": scraps["holdout_path"],
        "gate": scraps.get("gate"),
        "alias_moved": bool(scraps["alias_moved"]),
        "model_name": scraps.get("model_name"),
        "run_dir": prepared["run_dir"],
        "retraining_data_path": prepared["parameters"]["retraining_data_path"],
        "dag_run_id": run_id,
    }
    storage.write_json(retrain_result_uri(run_id), outcome)
    return outcome
