"""The deployment DAG with ``dry_run=false``, for real, on 127.0.0.1.

A registered champion in a sqlite MLflow store; Debian's ``docker-registry`` as the registry;
podman as the builder; ``k8s/`` rendered through the deployment's overlay, adapted and played
with ``podman kube play`` as the "cluster" (no Kubernetes control plane: see
tests/infra/test_manifests_play.py). The DAG runs under Airflow's own ``dag.test()``: it
exports exactly the champion's version, bakes it into ``<registry>/<image>:v<N>``, pushes it,
plays it once and verifies ``/model-info``. A verification that cannot succeed fails the DAG and
the record says so. The same code with builder=docker, registry_kind=ecr|minikube and
deployer=kubectl is the Minikube path (docs/minikube.md).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

DAG_ID = "health_predict_api_deployment"
IMAGE_NAME = "healthpredict-api-dagtest"  # not the tags other tests or `make image-test` use
TOKEN = "dag-test-token"  # test-only secret  # noqa: S105


def _require_tools() -> None:
    for binary, package in (
        ("podman", "podman"),
        ("catatonit", "catatonit"),
        ("slirp4netns", "slirp4netns"),
        ("kubectl", "kubectl"),
        ("docker-registry", "docker-registry"),
    ):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (apt-get install {package})")


@pytest.fixture(scope="module")
def image_registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1:<free port>, its storage in a temporary folder."""
    _require_tools()
    from dagtools import free_port

    folder = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/v2/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        yield {"host": f"127.0.0.1:{port}", "url": url}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def champion(dag_env, synthetic_champion):
    """A logistic-regression champion (version 1) on small synthetic data."""
    return synthetic_champion(2000).info


@pytest.fixture(scope="module")
def deployments(airflow_db, dag_env, champion, image_registry):
    """Runs the DAG with given conf; removes every pod, image and work folder afterwards."""
    from dagtools import free_port, load_dags

    from healthpredict.mlops import containers, deploy, deploy_run
    from healthpredict.pipelines import deployment
    from healthpredict.serving import auth

    tokens = dag_env / "tokens"
    tokens.write_text(auth.token_line("dag-test", TOKEN) + "\n")
    host_port = free_port()
    base_conf = {
        "dry_run": False,
        "ecr_registry": image_registry["host"],
        "image_name": IMAGE_NAME,
        "builder": "podman",
        "registry_kind": "plain",
        "deployer": "podman-kube",
        "base_image": containers.STANDIN_BASE,
        "host_port": host_port,
        "tokens_file": str(tokens),
        "api_url": f"http://127.0.0.1:{host_port}",
        "rollout_timeout": "120s",
        "verify_timeout": 60,
    }
    runs, built = [], set()
    podman = containers.default_podman()
    containers.ensure_standin_base(podman)  # once per store (debootstrap, ~2.5 min)

    def run(**overrides):
        """Run the DAG once with ``overrides`` on the conf; return ``(dag run, conf)``."""
        conf = {**base_conf, **overrides}
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(deploy_run.TOKEN_ENV, TOKEN)
            dag_run = load_dags()[DAG_ID].test(run_conf=conf)
        runs.append(dag_run.run_id)
        image = deploy.image_ref(image_registry["host"], IMAGE_NAME, champion.version)
        if podman.image_exists(image):  # each run's build re-tags: remember every image
            built.add(podman.run("image", "inspect", "--format", "{{.Id}}", image).strip())
        return dag_run, conf

    run.api_url = base_conf["api_url"]
    yield run
    target = deploy.DeploymentTarget(
        image_registry["host"], IMAGE_NAME, builder="podman", deployer="podman-kube"
    )
    played = [
        deployment.workdir(r) for r in runs if (deployment.workdir(r) / "played.yaml").exists()
    ]
    try:
        if played:  # every run replaced the same pod: the last one's manifest removes it
            deploy_run.run_commands(deploy.teardown_commands(target, played[-1]), dry_run=False)
    finally:
        for run_id in runs:
            shutil.rmtree(deployment.workdir(run_id), ignore_errors=True)
        for image_id in built:
            podman.run("rmi", "--force", "--ignore", image_id)
    pods = podman.run("pod", "ps", "--format", "{{.Name}}")
    assert f"{target.deployment}-pod-0" not in pods, pods


def test_a_real_run_builds_pushes_plays_and_verifies(deployments, champion, image_registry):
    from dagtools import task_states, xcom

    from healthpredict.core import storage
    from healthpredict.mlops import containers, deploy
    from healthpredict.pipelines import deployment

    run, conf = deployments()
    assert run.state == "success", task_states(run)
    version = champion.version
    image = deploy.image_ref(image_registry["host"], IMAGE_NAME, version)
    # Pushed: the registry lists the tag that names the version.
    tags = requests.get(f"{image_registry['url']}/v2/{IMAGE_NAME}/tags/list", timeout=10).json()
    assert tags == {"name": IMAGE_NAME, "tags": [f"v{version}"]}
    # Built with exactly this version inside (the image's label and the served /model-info).
    podman = containers.default_podman()
    assert podman.image_label(image, containers.VERSION_LABEL) == version
    verified = xcom(DAG_ID, run.run_id, "verify_model_info")
    assert verified["ok"] is True and str(verified["model_info"]["version"]) == version
    assert verified["model_info"]["source"] == "/opt/model"
    # ONE rollout: the overlay sets the image through kustomize `images`; no `set image`.
    record = storage.read_json(deployment.deployment_record_uri(run.run_id))
    assert record["overlay"]["images"] == [
        {"name": "healthpredict-api", "newName": image.rsplit(":", 1)[0], "newTag": f"v{version}"}
    ]
    commands = [r["argv"] for step in deploy.STEPS for r in record["steps"][step]]
    assert not any("set" in argv and "image" in argv for argv in commands)
    assert [c for c in commands if "play" in c] == [
        podman.argv(
            "kube", "play", "--replace", "--network", "slirp4netns",
            str(Path(record["workdir"]) / "played.yaml"),
        )
    ]  # fmt: skip
    assert all(r["returncode"] == 0 for step in deploy.STEPS for r in record["steps"][step])
    assert record["verification"]["ok"] is True and record["dry_run"] is False
    # The pod keeps serving it after the run.
    info = requests.get(conf["api_url"] + "/model-info", timeout=10).json()
    assert str(info["version"]) == version


def test_a_failed_verification_fails_the_run(deployments, champion):
    from dagtools import free_port, task_states

    from healthpredict.core import storage
    from healthpredict.pipelines import deployment

    # The pod is played and ready, but the API the check asks is not there: the check must
    # fail closed, not pass.
    nowhere = f"http://127.0.0.1:{free_port()}"
    run, _ = deployments(api_url=nowhere, verify_timeout=3)
    states = task_states(run)
    assert run.state == "failed" and states["verify_model_info"] == "failed", states
    assert states["wait_for_rollout"] == "success"
    record = storage.read_json(deployment.deployment_record_uri(run.run_id))
    verification = record["verification"]
    assert verification["ok"] is False and verification["verified"] is True
    assert f"{nowhere}/model-info is unreachable" in verification["error"]


def test_the_played_pod_serving_another_version_fails_the_check(deployments, champion):
    from healthpredict.mlops import deploy_run

    # The pod of the runs above serves the champion; a check expecting another version fails.
    with pytest.raises(deploy_run.DeploymentError, match=r"serves model version 1, expected 99"):
        deploy_run.verify_model_info(deployments.api_url, 99, timeout=2, token=TOKEN)
