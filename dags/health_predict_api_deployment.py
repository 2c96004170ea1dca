"""Deploy the champion: build and push the serving image, roll it out on Minikube, verify.

The image is `<ecr_registry>/<image_name>:v<champion version>`; `kubectl apply -k` and
`kubectl set image` roll it out on the `kube_context` cluster, `kubectl rollout status` waits
for it, and the task `verify_model_info` fails unless `GET <api_url>/model-info` reports the
champion's version. The commands come from `healthpredict.mlops.deploy.deployment_steps`; with
`dry_run` they are only printed and recorded (XCom and `<storage>/deployments/<run_id>.json`),
while the version check still runs.
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
        "dry_run": Param(False, type="boolean", description="Record docker/aws/kubectl only."),
        "api_url": Param(
            os.environ.get("HP_API_URL", "http://127.0.0.1:8000"),
            type="string",
            description="Base URL of the deployed API, for the /model-info check.",
        ),
        "ecr_registry": Param(
            os.environ.get("HP_ECR_REGISTRY", ""),
            type="string",
            description="<account>.dkr.ecr.<region>.amazonaws.com",
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
        """Fail unless the API reports the champion's version."""
        version = ti.xcom_pull(task_ids="get_champion_version")["version"]
        try:
            body = deploy.verify_model_info(
                params["api_url"],
                version,
                params["verify_timeout"],
                model_name=params["mlflow_model_name"],
            )
        except deploy.DeploymentError as exc:
            deployment.record_deployment(
                run_id, verification={"ok": False, "api_url": params["api_url"], "error": str(exc)}
            )
            raise
        deployment.record_deployment(
            run_id, verification={"ok": True, "api_url": params["api_url"], "model_info": body}
        )
        return body

    chain(
        get_champion_version(),
        build_image,
        push_image,
        deploy_to_minikube,
        wait_for_rollout,
        verify_model_info(),
    )
