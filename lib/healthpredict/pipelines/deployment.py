"""The deployment DAG's steps: find the champion, build and roll out its image, keep a record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.settings import project_root
from healthpredict.mlops import deploy, registry, tracking
from healthpredict.runs.papermill_task import safe_name
from healthpredict.runs.record import iso, utc_now

log = logging.getLogger(__name__)


def champion(model_name: str | None = None) -> dict[str, str]:
    """Version and pinned URI of the champion.

    Raises:
        healthpredict.modeling.runtime.model_meta.ModelNotFoundError: The model has no champion.
    """
    # MLflow's own default would be ./mlflow.db in whatever folder the task runs in.
    tracking.setup_mlflow()
    info = registry.get_model_info(registry.champion_uri(model_name))
    return {"version": info.version, "model_uri": info.model_uri}


def deployment_record_uri(run_id: str) -> str:
    """``<storage>/deployments/<run id>.json``: what a deployment run did (or would have done)."""
    return layout.deployment_record(safe_name(run_id, 200))


def record_deployment(run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's deployment record (``steps`` are merged per step)."""
    uri = deployment_record_uri(run_id)
    record = storage.read_json(uri) if storage.exists(uri) else {"dag_run_id": run_id}
    steps = {**record.get("steps", {}), **fields.pop("steps", {})}
    record.update(fields, steps=steps, updated_at=iso(utc_now()))
    storage.write_json(uri, record)
    return record


def deployment_step(step: str, version: str, params: Mapping[str, Any], run_id: str) -> list:
    """Run (or, with ``params["dry_run"]``, only record) one step of the deployment.

    Raises:
        healthpredict.mlops.deploy.DeploymentError: A command failed or is not installed.
        ValueError: The registry is not set (``ecr_registry`` param or ``HP_ECR_REGISTRY``).
    """
    image_registry = params["ecr_registry"]
    if not image_registry:
        raise ValueError("no image registry: set the ecr_registry param or HP_ECR_REGISTRY")
    target = deploy.DeploymentTarget(
        image_registry,
        params["image_name"],
        params["k8s_dir"],
        params["namespace"],
        kube_context=params["kube_context"] or None,
        deployment=params["deployment_name"],
        container=params["container_name"],
        rollout_timeout=params["rollout_timeout"],
    )
    commands = deploy.deployment_steps(version, target)[step]
    dry_run = bool(params["dry_run"])
    records = deploy.run_commands(commands, dry_run=dry_run, cwd=project_root(), log=log.info)
    record_deployment(
        run_id,
        dry_run=dry_run,
        version=str(version),
        image=deploy.image_ref(image_registry, params["image_name"], version),
        steps={step: records},
    )
    return records
