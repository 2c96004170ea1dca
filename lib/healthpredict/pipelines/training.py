"""The training DAG's steps: prepared data, search fan-out, registration check, retraining outcome.

The notebooks (``01_eda``, ``02_train_hpo``, ``04_retrain``) run through
:mod:`healthpredict.runs.papermill_task`; these functions check and record what they did. With
``search_tasks`` >= 1 the search runs before the notebook, in that many tasks (processes,
machines) sharing one Optuna study: :func:`plan_search` creates it and gives each task its job,
:func:`run_search_worker` runs one job, and the notebook evaluates and registers the best trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.constants import CHAMPION
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import TrainParams
from healthpredict.mlops import registry, tracking
from healthpredict.runs.papermill_task import read_run_scraps, safe_name


def retrain_result_uri(run_id: str, root: str | None = None) -> str:
    """Where the training DAG leaves the outcome of a retraining run with this run id."""
    return layout.retrain_record(safe_name(run_id, 200), root)


# The stage parameters a search worker needs besides its share of the trials.
SEARCH_JOB_FIELDS = (
    "data_dir",
    "families",
    "n_trials",
    "study_storage",
    "seed",
    "cv_folds",
    "target",
)


def search_study_name(run_id: str) -> str:
    """The study of a DAG run's search tasks: the same on every retry of the run."""
    return f"healthpredict-{safe_name(run_id, 200)}"


def create_search_study(study_name: str, params: TrainParams) -> str:
    """Create (or, on a retry, reuse) the study separate search workers fill; returns its name.

    Raises:
        ValueError: The study exists with other families, seed or folds.
    """
    from healthpredict.mlops.train import search_settings
    from healthpredict.modeling.studies import create_study

    create_study(study_name, search_settings(params))
    return study_name


def plan_search(params: Mapping[str, Any], run_id: str) -> list[dict[str, Any]]:
    """One job per search task of this run (none when ``search_tasks`` is 0), study created.

    Args:
        params: The DAG run's params: ``search_tasks`` and the :class:`TrainParams` fields
            among :data:`SEARCH_JOB_FIELDS` it has (the others keep the stage's defaults).
        run_id: The DAG run, which names the study (:func:`search_study_name`).

    Returns:
        JSON-safe jobs for :func:`run_search_worker`: study, worker index, its share of
        ``n_trials`` and the search parameters.
    """
    from healthpredict.modeling.studies import worker_shares

    n_tasks = int(params.get("search_tasks") or 0)
    if n_tasks < 1:
        return []
    stage = TrainParams(**{k: params[k] for k in SEARCH_JOB_FIELDS if k in params})
    study_name = create_search_study(search_study_name(run_id), stage)
    search = stage.model_dump(mode="json", include=set(SEARCH_JOB_FIELDS))
    return [
        {"study_name": study_name, "worker": i, "n_trials": share, "params": search}
        for i, share in enumerate(worker_shares(stage.n_trials, n_tasks))
    ]


def run_search_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one job of :func:`plan_search`: load the prepared splits once, then its trials.

    Returns:
        The study, the worker and how many of the study's trials it finished by now.

    Raises:
        healthpredict.modeling.search.StudyNotFoundError: The study does not exist.
        healthpredict.core.storage.StorageError: No prepared splits at ``data_dir``.
    """
    from healthpredict.mlops.train import resolve_target, search_settings
    from healthpredict.modeling.fitting import load_training_splits
    from healthpredict.modeling.search import run_worker
    from healthpredict.modeling.studies import load_study

    stage = TrainParams(**job["params"])
    # A missing study fails here, before the splits are read.
    study = load_study(job["study_name"], stage.study_storage)
    manifest, frames = load_training_splits(stage.data_dir)
    worker = int(job["worker"])
    run_worker(
        job["study_name"],
        search_settings(stage),
        frames["initial_train"],
        frames["validation"],
        resolve_target(stage, manifest),
        worker,
        int(job["n_trials"]),
    )
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker]
    return {
        "study_name": job["study_name"],
        "worker": worker,
        "trials": len(mine),
        "complete": sum(t.state.name == "COMPLETE" for t in mine),
    }


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
