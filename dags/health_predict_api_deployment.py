"""Deploy the champion: build its image (model baked in), push it, roll it out once, verify.

`build_image` exports exactly the champion's version and bakes it into
`<ecr_registry>/<image_name>:v<version>`; `push_image` pushes it (ECR or a plain registry) or
loads it into Minikube; `deploy_to_minikube` applies an overlay of `k8s/` whose kustomize
`images` entry names that tag (one rollout; for ECR also the pull Secret); `wait_for_rollout`
waits for it; `verify_model_info` fails unless `GET <api_url>/model-info` reports the champion's
version. `builder` (docker | podman), `registry_kind` (ecr | plain | minikube) and `deployer`
(kubectl | podman-kube: the same manifests played as a local pod) choose the tools; the
commands come from `healthpredict.mlops.deploy.deployment_steps`. With `dry_run` they are only
printed and recorded (XCom and `<storage>/deployments/<run_id>.json`) and nothing is verified
(the record says "not verified: dry run").
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param, chain, task

from healthpredict.core.settings import get_settings
from healthpredict.mlops import deploy
from healthpredict.pipelines import deployment

DAG_ID = "health_predict_api_deployment"
_settings = get_settings()

with DAG(
    dag_id=DAG_ID,
    description="Build, push and roll out the API image of the champion; verify /model-info.",
    schedule=None,
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # two rollouts of one Deployment would race
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["healthpredict", "deployment"],
    params={
        "mlflow_model_name": Param(_settings.model_name, type="string"),
        "dry_run": Param(
            False, type="boolean", description="Record the commands only; verify nothing."
        ),
        "api_url": Param(
            os.environ.get("HP_API_URL", "http://127.0.0.1:8000"),
            type="string",
            description="Base URL of the deployed API, for the /model-info check.",
        ),
        "ecr_registry": Param(
            os.environ.get("HP_ECR_REGISTRY", ""),
            type="string",
            description="Registry host: <account>.dkr.ecr.<region>.amazonaws.com, or "
            "127.0.0.1:5000 for a plain registry",
        ),
        "builder": Param("docker", enum=list(deploy.BUILDERS)),
        "registry_kind": Param(
            "ecr",
            enum=list(deploy.REGISTRY_KINDS),
            description="ecr: login + push; plain: push without login; minikube: image load",
        ),
        "deployer": Param(
            "kubectl",
            enum=list(deploy.DEPLOYERS),
            description="kubectl: the cluster; podman-kube: the manifests as a local pod",
        ),
        "base_image": Param(
            "", type="string", description="The Dockerfile's BASE_IMAGE ('' = its default)."
        ),
        "host_port": Param(
            deploy.DEFAULT_HOST_PORT,
            type="integer",
            minimum=1,
            maximum=65535,
            description="podman-kube: the API's port on 127.0.0.1",
        ),
        "tokens_file": Param(
            os.environ.get("HP_DEPLOY_TOKENS_FILE", ""),
            type="string",
            description="Token file made into the healthpredict-api-tokens Secret by the "
            "overlay ('' = the Secret is created by hand, docs/minikube.md)",
        ),
        "image_name": Param(deploy.DEFAULT_IMAGE_NAME, type="string"),
        "k8s_dir": Param("k8s/", type="string"),
        "namespace": Param(deploy.DEFAULT_NAMESPACE, type="string"),
        "kube_context": Param(deploy.DEFAULT_KUBE_CONTEXT, type="string"),
        "deployment_name": Param(deploy.DEFAULT_DEPLOYMENT, type="string"),
        "container_name": Param(deploy.DEFAULT_CONTAINER, type="string"),
        "rollout_timeout": Param("180s", type="string", pattern=r"^\d+[smh]$"),
        "verify_timeout": Param(120, type="number", minimum=1),
    },
) as dag:

    @task
    def get_champion_version(params=None, run_id=None):
        """The champion's registry version (fails when there is none)."""
        found = deployment.champion(params["mlflow_model_name"])
        deployment.record_deployment(run_id, dry_run=params["dry_run"], **found)
        return found

    def deployment_task(step: str, task_id: str):
        """One step of deploy.deployment_steps: run its commands, or record them (dry run)."""

        @task(task_id=task_id)
        def run_step(ti=None, params=None, run_id=None):
            version = ti.xcom_pull(task_ids="get_champion_version")["version"]
            return deployment.deployment_step(step, version, params, run_id)

        return run_step()

    build_image = deployment_task("build", "build_image")
    push_image = deployment_task("push", "push_image")
    deploy_to_minikube = deployment_task("deploy", "deploy_to_minikube")
    wait_for_rollout = deployment_task("rollout", "wait_for_rollout")

    @task
    def verify_model_info(ti=None, params=None, run_id=None):
        """Fail unless the API reports the champion's version (a dry run verifies nothing)."""
        version = ti.xcom_pull(task_ids="get_champion_version")["version"]
        return deployment.verify(version, params, run_id)

    chain(
        get_champion_version(),
        build_image,
        push_image,
        deploy_to_minikube,
        wait_for_rollout,
        verify_model_info(),
    )
