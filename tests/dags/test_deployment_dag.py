"""The deployment commands, and the deployment DAG in dry run against a live API.

The version check talks to the real serving app (``serving/app.py`` under uvicorn on
127.0.0.1) serving the champion from a real sqlite MLflow registry.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from healthpredict.mlops import deploy

REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
IMAGE = f"{REGISTRY}/healthpredict-api:v7"
EXPECTED = [
    ["docker", "build", "-f", "serving/Dockerfile", "-t", IMAGE, "."],
    ["bash", "-o", "pipefail", "-c",
     "aws ecr get-login-password --region eu-west-1 | "
     f"docker login --username AWS --password-stdin {REGISTRY}"],
    ["docker", "push", IMAGE],
    ["kubectl", "--context", "minikube", "-n", "healthpredict", "apply", "-k", "k8s/"],
    ["kubectl", "--context", "minikube", "-n", "healthpredict", "set", "image",
     "deployment/healthpredict-api", f"api={IMAGE}"],
    ["kubectl", "--context", "minikube", "-n", "healthpredict", "rollout", "status",
     "deployment/healthpredict-api", "--timeout=180s"],
]  # fmt: skip


def test_deployment_commands_are_the_documented_ones():
    commands = deploy.deployment_commands(
        7, deploy.DeploymentTarget(REGISTRY, "healthpredict-api", "k8s/", "healthpredict")
    )
    assert commands == EXPECTED
    steps = deploy.deployment_steps("7", deploy.DeploymentTarget(REGISTRY))
    assert list(steps) == list(deploy.STEPS)
    assert [c for step in deploy.STEPS for c in steps[step]] == EXPECTED
    no_context = deploy.deployment_commands(7, deploy.DeploymentTarget(REGISTRY, kube_context=None))
    assert no_context[3] == ["kubectl", "-n", "healthpredict", "apply", "-k", "k8s/"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("v7", REGISTRY), "must be a registry version number"),
        (("7", ""), "must not be empty"),
        (("7", "registry.example.com"), "not an ECR registry"),
    ],
)
def test_bad_deployment_inputs_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        deploy.deployment_commands(args[0], deploy.DeploymentTarget(args[1]))


def test_other_registry_with_explicit_region_and_bad_timeout():
    commands = deploy.deployment_commands(
        3, deploy.DeploymentTarget("localhost:5000", region="us-east-1")
    )
    assert commands[0][-2] == "localhost:5000/healthpredict-api:v3"
    with pytest.raises(ValueError, match="rollout_timeout"):
        deploy.deployment_commands(3, deploy.DeploymentTarget(REGISTRY, rollout_timeout="soon"))


def test_run_commands_fails_closed(tmp_path):
    assert deploy.run_commands([["true"]], dry_run=False)[0]["returncode"] == 0
    lines = []
    recorded = deploy.run_commands(EXPECTED, dry_run=True, log=lines.append)
    assert [r["argv"] for r in recorded] == EXPECTED and all(r["dry_run"] for r in recorded)
    assert lines == [f"[dry run] {shlex.join(c)}" for c in EXPECTED]
    with pytest.raises(deploy.DeploymentError, match="hp-no-such-tool is not installed"):
        deploy.run_commands([["hp-no-such-tool", "--version"]], dry_run=False)
    with pytest.raises(deploy.DeploymentError, match=r"exit code 3: sh -c .*\nboom"):
        deploy.run_commands([["sh", "-c", "echo boom >&2; exit 3"], ["true"]], dry_run=False)


def test_reported_version_reads_the_known_shapes():
    assert deploy.reported_version({"version": "3", "name": "HealthPredict"}) == "3"
    assert deploy.reported_version({"model_version": 4}) == "4"
    assert deploy.reported_version({"model": {"version": "5"}}) == "5"
    assert deploy.reported_version({"status": "ok"}) is None


# ---- the DAG, in dry run, against the real API ------------------------------------------------


@pytest.fixture(scope="module")
def champion(dag_env):
    """A logistic-regression champion (version 1) on small synthetic data."""
    import mlflow

    from healthpredict.data.schema import make_target
    from healthpredict.data.split import SplitParams, load_split, prepare
    from healthpredict.mlops import registry, tracking
    from healthpredict.modeling.models import make_pipeline

    prepare("synthetic", params=SplitParams(initial_fraction=0.5), n_synthetic=2000)
    train = load_split("initial_train")
    pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train))
    tracking.setup_mlflow()
    tracking.use_experiment("HealthPredict_Training")

    def register():
        with mlflow.start_run():
            return registry.log_model(
                pipeline,
                threshold=0.3,
                target="<30",
                test_metrics={"roc_auc": 0.6},
                input_example=train,
                data_source="synthetic",
                params={"family": "logreg", "C": 1.0},
            )

    info = register()
    assert info.version == "1" and "champion" in info.aliases
    return register


@pytest.fixture(scope="module")
def api(champion, dag_env):
    """The real serving app under uvicorn on 127.0.0.1, serving the champion it found."""
    from dagtools import LiveServer

    from healthpredict.core.settings import get_settings

    repo = Path(__file__).resolve().parents[2]
    if not (repo / "serving" / "app.py").exists():
        pytest.skip("serving/app.py is not there")
    server = LiveServer(
        "app:app",
        cwd=repo / "serving",
        env={**get_settings().as_env(), "MODEL_URI": "models:/HealthPredict@champion"},
        ready_path="/ready",
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_dry_run_records_the_commands_and_verifies_the_live_api(airflow_db, api, dag_env):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from dagtools import load_dags, task_states, xcom

    from healthpredict.core import storage
    from healthpredict.pipelines import deployment

    conf = {"dry_run": True, "api_url": api.url, "ecr_registry": REGISTRY, "verify_timeout": 20}
    run = load_dags()["health_predict_api_deployment"].test(run_conf=conf)
    assert run.state == "success", task_states(run)
    expected = deploy.deployment_steps("1", deploy.DeploymentTarget(REGISTRY))
    for task_id, step in [
        ("build_image", "build"),
        ("push_image", "push"),
        ("deploy_to_minikube", "deploy"),
        ("wait_for_rollout", "rollout"),
    ]:
        pushed = xcom("health_predict_api_deployment", run.run_id, task_id)
        assert [r["argv"] for r in pushed] == expected[step] and all(r["dry_run"] for r in pushed)
    record = storage.read_json(deployment.deployment_record_uri(run.run_id))
    assert record["dry_run"] is True and record["version"] == "1"
    assert record["image"] == f"{REGISTRY}/healthpredict-api:v1"
    recorded = [r["argv"] for step in deploy.STEPS for r in record["steps"][step]]
    assert recorded == deploy.deployment_commands("1", deploy.DeploymentTarget(REGISTRY))
    assert recorded[0] == [
        "docker",
        "build",
        "-f",
        "serving/Dockerfile",
        "-t",
        f"{REGISTRY}/healthpredict-api:v1",
        ".",
    ]
    assert record["verification"]["ok"] is True
    assert record["verification"]["model_info"]["version"] == "1"


@pytest.mark.slow
def test_a_stale_api_fails_the_verification(airflow_db, api, champion, dag_env):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from dagtools import load_dags, task_states

    from healthpredict.core import storage
    from healthpredict.mlops import registry
    from healthpredict.pipelines import deployment

    newer = champion()  # a second version, promoted; the running API still serves version 1
    registry.promote("HealthPredict", newer.version)
    conf = {"dry_run": True, "api_url": api.url, "ecr_registry": REGISTRY, "verify_timeout": 3}
    run = load_dags()["health_predict_api_deployment"].test(run_conf=conf)
    states = task_states(run)
    assert run.state == "failed" and states["verify_model_info"] == "failed", states
    assert states["wait_for_rollout"] == "success"
    record = storage.read_json(deployment.deployment_record_uri(run.run_id))
    verification = record["verification"]
    assert verification["ok"] is False
    assert "serves model version 1, expected 2" in verification["error"]


@pytest.mark.slow
def test_a_real_run_without_the_tools_fails_at_the_first_step(airflow_db, api, tmp_path):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from dagtools import load_dags, task_states

    # An empty PATH: whatever this machine has installed, nothing is built or deployed.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        conf = {"api_url": api.url, "ecr_registry": REGISTRY, "verify_timeout": 2}
        run = load_dags()["health_predict_api_deployment"].test(run_conf=conf)
    states = task_states(run)
    assert run.state == "failed" and states["build_image"] == "failed", states
    assert states["get_champion_version"] == "success"
    assert {states[t] for t in ("push_image", "deploy_to_minikube", "wait_for_rollout",
                                "verify_model_info")} == {"upstream_failed"}  # fmt: skip


@pytest.mark.slow
def test_verify_model_info_against_the_live_api(api):
    assert deploy.verify_model_info(api.url, "1", timeout=5)["version"] == "1"
    with pytest.raises(deploy.DeploymentError, match="serves model version 1, expected 9"):
        deploy.verify_model_info(api.url, 9, timeout=2)
    with pytest.raises(deploy.DeploymentError, match="serves model 'HealthPredict', expected"):
        deploy.verify_model_info(api.url, "1", timeout=2, model_name="Other")
    with pytest.raises(deploy.DeploymentError, match="HTTP 404"):
        deploy.verify_model_info(api.url + "/nope", "1", timeout=2)


def test_unreachable_api_fails_the_verification():
    from dagtools import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(deploy.DeploymentError, match=r"is unreachable: .*gave up after 2 s"):
        deploy.verify_model_info(url, "1", timeout=2)
