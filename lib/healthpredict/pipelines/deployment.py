"""The deployment DAG's steps: find the champion, build and roll out its image, verify, record."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings, project_root
from healthpredict.mlops import deploy, deploy_run, registry, tracking
from healthpredict.runs.papermill_task import safe_name
from healthpredict.runs.record import iso, utc_now

log = logging.getLogger(__name__)
NOT_VERIFIED_DRY_RUN = "not verified: dry run"


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


def deployment_target(params: Mapping[str, Any]) -> deploy.DeploymentTarget:
    """The :class:`~healthpredict.mlops.deploy.DeploymentTarget` of the DAG's params.

    Every param is there: the DAG declares each with its default.

    Raises:
        ValueError: The registry is not set (``ecr_registry`` param or ``HP_ECR_REGISTRY``), or
            a setting is not one of the known ones.
    """
    image_registry = params["ecr_registry"]
    if not image_registry:
        raise ValueError("no image registry: set the ecr_registry param or HP_ECR_REGISTRY")
    return deploy.DeploymentTarget(
        image_registry,
        params["image_name"],
        params["k8s_dir"],
        params["namespace"],
        kube_context=params["kube_context"] or None,
        deployment=params["deployment_name"],
        container=params["container_name"],
        rollout_timeout=params["rollout_timeout"],
        builder=params["builder"],
        registry_kind=params["registry_kind"],
        deployer=params["deployer"],
        base_image=params["base_image"] or None,
        host_port=int(params["host_port"]),
        tokens_file=params["tokens_file"] or None,
    )


def workdir(run_id: str) -> Path:
    """``<HP_CACHE_DIR>/deployments/<run id>``: the files the run's tasks share.

    The exported model, the overlay, the played manifest and the pod's secret files (kept
    while the pod runs: they are its Secret volumes).
    """
    return get_settings().cache_dir / "deployments" / safe_name(run_id, 200)


def deployment_step(step: str, version: str, params: Mapping[str, Any], run_id: str) -> list:
    """Run (or, with ``params["dry_run"]``, only record) one step of the deployment.

    Raises:
        healthpredict.mlops.deploy_run.DeploymentError: A command failed or is not installed.
        ValueError: Bad settings (see :func:`deployment_target`).
    """
    target = deployment_target(params)
    root = project_root()
    work = deploy.WorkDir(workdir(run_id))
    commands = deploy.deployment_steps(
        version, target, work.root, model_name=params["mlflow_model_name"], root=root
    )[step]
    dry_run = bool(params["dry_run"])
    overlay = deploy.overlay_kustomization(
        version, target, (root / target.k8s_dir).resolve(), work.overlay.resolve()
    )
    if not dry_run:
        work.root.mkdir(parents=True, exist_ok=True)
        if step == "build":
            shutil.rmtree(work.model, ignore_errors=True)  # export-model wants a new folder
        if step == "deploy":
            deploy.write_overlay(version, target, work, root)
    try:
        records = deploy_run.run_commands(commands, dry_run=dry_run, cwd=root, log=log.info)
    finally:
        if not dry_run:
            # The image carries the model now; the archive was only for minikube's load.
            if step == "build":
                shutil.rmtree(work.model, ignore_errors=True)
            work.image_tar.unlink(missing_ok=True)
    record_deployment(
        run_id,
        dry_run=dry_run,
        version=str(version),
        image=deploy.image_ref(target.registry, target.image_name, version),
        target={
            "builder": target.builder,
            "registry_kind": target.registry_kind,
            "deployer": target.deployer,
        },
        overlay=overlay,
        workdir=str(work.root),
        steps={step: records},
    )
    return records


def verify(version: str, params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Check that the deployed API reports ``version`` on ``/model-info``; record the result.

    A dry run deployed nothing, so it verifies nothing: it records ``not verified: dry run``
    instead of asking whatever API happens to run at ``api_url``.

    Raises:
        healthpredict.mlops.deploy_run.DeploymentError: The API was unreachable or kept reporting
            another version (recorded as ``ok: false`` first).
    """
    api_url = params["api_url"]
    if params["dry_run"]:
        result = {"ok": None, "verified": False, "reason": NOT_VERIFIED_DRY_RUN, "api_url": api_url}
        log.info("%s: nothing was deployed, %s is not asked", NOT_VERIFIED_DRY_RUN, api_url)
        record_deployment(run_id, verification=result)
        return result
    try:
        body = deploy_run.verify_model_info(
            api_url,
            version,
            params["verify_timeout"],
            model_name=params["mlflow_model_name"],
        )
    except deploy_run.DeploymentError as exc:
        record_deployment(
            run_id,
            verification={"ok": False, "verified": True, "api_url": api_url, "error": str(exc)},
        )
        raise
    result = {"ok": True, "verified": True, "api_url": api_url, "model_info": body}
    record_deployment(run_id, verification=result)
    return result
