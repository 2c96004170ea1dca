"""The deployment commands, the overlay, the local-pod adaptation, and the DAG in dry run.

The version check talks to the real serving app (``serving/app.py`` under uvicorn on
127.0.0.1) serving the champion from a real sqlite MLflow registry. The real run
(``dry_run=false``: podman, a local registry, the manifests played) is in
test_deployment_real.py.
"""

from __future__ import annotations

import base64
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from healthpredict.mlops import deploy, deploy_run, kube_local

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
IMAGE = f"{REGISTRY}/healthpredict-api:v7"
WORK = "/w"
KUBECTL = ["kubectl", "--context", "minikube"]
PULL_SECRET_CONFIG = (
    'printf \'{"auths":{"%s":{"auth":"%s"}}}\' ' + REGISTRY + " "
    '"$(printf \'AWS:%s\' "$(aws ecr get-login-password --region eu-west-1)" | base64 -w0)"'
)
EXPECTED = [
    [sys.executable, "-m", "healthpredict.cli", "export-model",
     "--model-uri", "models:/HealthPredict/7", "--out", "/w/model"],
    ["docker", "build", "-f", "serving/Dockerfile", "--build-context", "model=/w/model",
     "--build-arg", "MODEL_VERSION=7", "-t", IMAGE, "."],
    ["bash", "-o", "pipefail", "-c",
     "aws ecr get-login-password --region eu-west-1 | "
     f"docker login --username AWS --password-stdin {REGISTRY}"],
    ["docker", "push", IMAGE],
    ["bash", "-o", "pipefail", "-c",
     "kubectl --context minikube create namespace healthpredict --dry-run=client -o yaml"
     " | kubectl --context minikube apply -f -"],
    ["bash", "-o", "pipefail", "-c",
     f"{PULL_SECRET_CONFIG} | kubectl --context minikube -n healthpredict create secret generic "
     "ecr-pull --type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson=/dev/stdin "
     "--dry-run=client -o yaml | kubectl --context minikube apply -f -"],
    [*KUBECTL, "-n", "healthpredict", "apply", "-k", "/w/overlay"],
    [*KUBECTL, "-n", "healthpredict", "rollout", "status",
     "deployment/healthpredict-api", "--timeout=180s"],
]  # fmt: skip


def test_deployment_commands_are_the_documented_ones():
    target = deploy.DeploymentTarget(REGISTRY, "healthpredict-api", "k8s/", "healthpredict")
    assert deploy.deployment_commands(7, target, workdir=WORK) == EXPECTED
    steps = deploy.deployment_steps("7", deploy.DeploymentTarget(REGISTRY), WORK)
    assert list(steps) == list(deploy.STEPS)
    assert [c for step in deploy.STEPS for c in steps[step]] == EXPECTED
    # ONE rollout: the image is set by the overlay, never by `kubectl set image`.
    assert not any("set" in c and "image" in c for c in EXPECTED)
    no_context = deploy.deployment_steps(
        7, deploy.DeploymentTarget(REGISTRY, kube_context=None), WORK
    )
    assert no_context["deploy"][-1] == [
        "kubectl",
        "-n",
        "healthpredict",
        "apply",
        "-k",
        "/w/overlay",
    ]
    # The ECR password only ever travels through pipes.
    assert all("get-login-password" not in " ".join(c) or c[0] == "bash" for c in EXPECTED)


def test_podman_plain_registry_and_podman_kube_commands(tmp_path):
    target = deploy.DeploymentTarget(
        "127.0.0.1:5000",
        builder="podman",
        registry_kind="plain",
        deployer="podman-kube",
        base_image="localhost/base:1",
        host_port=18123,
        podman_store=str(tmp_path),
    )
    steps = deploy.deployment_steps(3, target, WORK, root=ROOT)
    podman = target.podman().argv()
    image = "127.0.0.1:5000/healthpredict-api:v3"
    build = steps["build"][1]
    assert build[: len(podman)] == podman and build[-1] == str(ROOT)
    joined = shlex.join(build)
    for part in (
        "--build-context model=/w/model",
        "--build-arg MODEL_VERSION=3",
        "--build-arg BASE_IMAGE=localhost/base:1",
        f"-t {image}",
        "--pull=never",
    ):
        assert part in joined, part  # fmt: skip
    # TLS is skipped for a loopback registry only.
    assert steps["push"] == [[*podman, "push", "--tls-verify=false", image]]
    remote = deploy.deployment_steps(
        3, deploy.DeploymentTarget("registry.example.org:5000", builder="podman",
                                   registry_kind="plain", podman_store=str(tmp_path)), WORK
    )  # fmt: skip
    assert remote["push"] == [[*podman, "push", "registry.example.org:5000/healthpredict-api:v3"]]
    kube = [sys.executable, "-m", "healthpredict.mlops.kube_local"]
    assert steps["deploy"] == [
        ["kubectl", "kustomize", "/w/overlay", "-o", "/w/rendered.yaml"],
        [*kube, "adapt", "/w/rendered.yaml", "/w/played.yaml", "--host-port", "18123",
         "--secrets-dir", "/w/secrets", "--container", "api"],
        [*podman, "kube", "play", "--replace", "--network", "slirp4netns", "/w/played.yaml"],
    ]  # fmt: skip
    assert steps["rollout"] == [
        [*kube, "wait", "/w/played.yaml", "--timeout", "180", "--podman-store", str(tmp_path)]
    ]
    assert deploy.teardown_commands(target, WORK) == [[*podman, "kube", "down", "/w/played.yaml"]]


def test_minikube_loads_the_image_instead_of_pushing(tmp_path):
    docker = deploy.DeploymentTarget("local", registry_kind="minikube")
    assert deploy.deployment_steps(2, docker, WORK)["push"] == [
        ["minikube", "-p", "minikube", "image", "load", "local/healthpredict-api:v2"]
    ]
    podman = deploy.DeploymentTarget(
        "local", registry_kind="minikube", builder="podman", podman_store=str(tmp_path)
    )
    save, load = deploy.deployment_steps(2, podman, WORK)["push"]
    assert save[-4:] == ["docker-archive", "-o", "/w/image.tar", "local/healthpredict-api:v2"]
    assert load == ["minikube", "-p", "minikube", "image", "load", "/w/image.tar"]
    # No pull secret without ECR.
    assert "patches" not in deploy.overlay_kustomization(2, docker, ROOT / "k8s", ROOT / "x")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("v7", REGISTRY), {}, "must be a registry version number"),
        (("7", ""), {}, "must not be empty"),
        (("7", "registry.example.com"), {}, "not an ECR registry"),
        (("7", REGISTRY), {"builder": "kaniko"}, "builder must be one of docker, podman"),
        (("7", REGISTRY), {"registry_kind": "gcr"}, "registry_kind must be one of"),
        (("7", REGISTRY), {"deployer": "helm"}, "deployer must be one of"),
        (("7", REGISTRY), {"rollout_timeout": "soon"}, "rollout_timeout"),
    ],
)
def test_bad_deployment_inputs_are_refused(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        deploy.deployment_commands(args[0], deploy.DeploymentTarget(args[1], **kwargs))


def test_other_registry_with_explicit_region():
    commands = deploy.deployment_commands(
        3, deploy.DeploymentTarget("localhost:5000", region="us-east-1"), workdir=WORK
    )
    assert commands[1][-2] == "localhost:5000/healthpredict-api:v3"
    assert "--region us-east-1" in commands[2][-1]


# ---- the overlay, rendered by the real kustomize -------------------------------------------


def _kustomize(folder: Path) -> dict[str, dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl, or make tools)")
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(done.stdout)}


def test_the_overlay_sets_the_image_and_the_pull_secret_once(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("ward-7 sha256:" + "0" * 64 + " predict\n")
    target = deploy.DeploymentTarget(REGISTRY, tokens_file=str(tokens))
    work = deploy.WorkDir(tmp_path / "work")
    deploy.write_overlay(7, target, work, ROOT)
    rendered = _kustomize(work.overlay)
    pod = rendered["Deployment/healthpredict-api"]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == [IMAGE]
    assert pod["imagePullSecrets"] == [{"name": "ecr-pull"}]
    secret = rendered["Secret/healthpredict-api-tokens"]
    assert secret["metadata"]["namespace"] == "healthpredict"
    assert base64.b64decode(secret["data"]["tokens"]).decode() == tokens.read_text()
    # Everything else is the project's kustomization, unchanged.
    base = _kustomize(ROOT / "k8s")
    assert set(rendered) - set(base) == {"Secret/healthpredict-api-tokens"}
    assert rendered["Service/healthpredict-api"] == base["Service/healthpredict-api"]


# ---- adapting for podman kube play ----------------------------------------------------------


def test_kube_local_keeps_the_pod_spec_and_changes_only_what_podman_needs(tmp_path):
    rendered = _kustomize(ROOT / "k8s")
    before = rendered["Deployment/healthpredict-api"]["spec"]["template"]["spec"]
    # The Secrets the cluster gets by hand (docs/minikube.md), as the overlay generates them.
    secrets = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": v["secret"]["secretName"]},
         "data": {"tokens": base64.b64encode(b"x sha256:" + b"0" * 64 + b"\n").decode()}}
        for v in before["volumes"] if "secret" in v and not v["secret"].get("optional")
    ]  # fmt: skip
    adapted = kube_local.adapt(
        [*rendered.values(), *secrets], host_port=18001, secrets_dir=tmp_path
    )
    assert [d["kind"] for d in adapted.documents] == ["ConfigMap", "Deployment"]
    assert any("dropped" in c and "Service/healthpredict-api" in c for c in adapted.changes)
    spec = adapted.deployment["spec"]
    assert spec["replicas"] == 1
    (api,) = spec["template"]["spec"]["containers"]
    assert api["ports"][0] == {
        "name": "http", "containerPort": 8000, "hostPort": 18001, "hostIP": "127.0.0.1"
    }  # fmt: skip
    assert api["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
    after = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    for volume in before["volumes"]:
        if "secret" not in volume:
            assert after[volume["name"]] == volume
        elif volume["secret"].get("optional"):  # absent, so dropped: Kubernetes starts without
            assert volume["name"] not in after
        else:  # a read-only folder holding the Secret's keys
            name = volume["secret"]["secretName"]
            assert after[volume["name"]]["hostPath"]["path"] == str(tmp_path / name)
            assert f"{name}/tokens" in adapted.secret_files
    if secrets:  # without the Secret document a required Secret volume is refused
        with pytest.raises(kube_local.KubeLocalError, match="which no document provides"):
            kube_local.adapt(list(rendered.values()), host_port=18001, secrets_dir=tmp_path)


def test_kube_local_turns_a_secret_into_a_read_only_folder_and_refuses_a_missing_one(tmp_path):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "x",
                            "ports": [{"containerPort": 8000}],
                            "volumeMounts": [{"name": "t", "mountPath": "/s"}],
                        }
                    ],
                    "volumes": [{"name": "t", "secret": {"secretName": "tok"}}],
                }
            },
        },
    }
    with pytest.raises(kube_local.KubeLocalError, match="needs Secret 'tok', which no document"):
        kube_local.adapt([deployment], host_port=1, secrets_dir=tmp_path)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tok"},
        "data": {"tokens": base64.b64encode(b"line\n").decode()},
    }
    adapted = kube_local.adapt([deployment, secret], host_port=1, secrets_dir=tmp_path / "s")
    manifest = kube_local.write(adapted, tmp_path / "played.yaml", tmp_path / "s")
    assert (tmp_path / "s" / "tok" / "tokens").read_bytes() == b"line\n"
    (played,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    pod = played["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "t", "hostPath": {"path": str(tmp_path / "s" / "tok"), "type": "Directory"}}
    ]
    assert pod["containers"][0]["volumeMounts"][0]["readOnly"] is True
    assert kube_local.published_url(manifest) == "http://127.0.0.1:1"
    with pytest.raises(kube_local.KubeLocalError, match="exactly one Deployment"):
        kube_local.adapt([secret], host_port=1, secrets_dir=tmp_path)


def test_run_commands_fails_closed(tmp_path):
    assert deploy_run.run_commands([["true"]], dry_run=False)[0]["returncode"] == 0
    lines = []
    recorded = deploy_run.run_commands(EXPECTED, dry_run=True, log=lines.append)
    assert [r["argv"] for r in recorded] == EXPECTED and all(r["dry_run"] for r in recorded)
    assert lines == [f"[dry run] {shlex.join(c)}" for c in EXPECTED]
    with pytest.raises(deploy_run.DeploymentError, match="hp-no-such-tool is not installed"):
        deploy_run.run_commands([["hp-no-such-tool", "--version"]], dry_run=False)
    with pytest.raises(deploy_run.DeploymentError, match=r"exit code 3: sh -c .*\nboom"):
        deploy_run.run_commands([["sh", "-c", "echo boom >&2; exit 3"], ["true"]], dry_run=False)


def test_reported_version_reads_the_known_shapes():
    assert deploy_run.reported_version({"version": "3", "name": "HealthPredict"}) == "3"
    assert deploy_run.reported_version({"model_version": 4}) == "4"
    assert deploy_run.reported_version({"model": {"version": "5"}}) == "5"
    assert deploy_run.reported_version({"status": "ok"}) is None


# ---- the DAG, in dry run, next to a live API ----------------------------------------------

TOKEN = "deploy-dag-test-token"  # test-only secret  # noqa: S105


@pytest.fixture(scope="module")
def champion(dag_env, synthetic_champion):
    """Registers a logistic-regression champion on small synthetic data (version 1 first)."""
    info = synthetic_champion(2000).info
    assert info.version == "1" and "champion" in info.aliases
    return lambda: synthetic_champion(2000).info


@pytest.fixture(scope="module")
def api(champion, dag_env):
    """The real serving app under uvicorn on 127.0.0.1, serving the champion it found."""
    from dagtools import LiveServer

    from healthpredict.core.settings import get_settings
    from healthpredict.serving import auth

    if not (ROOT / "serving" / "app.py").exists():
        pytest.skip("serving/app.py is not there")
    server = LiveServer(
        "app:app",
        cwd=ROOT / "serving",
        env={
            **get_settings().as_env(),
            "MODEL_URI": "models:/HealthPredict@champion",
            "HP_SERVE_TOKENS": auth.token_line("deploy-test", TOKEN) + "\n",
        },
        ready_path="/ready",
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_dry_run_records_the_commands_and_verifies_nothing(airflow_db, api, champion, dag_env):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from dagtools import load_dags, task_states, xcom

    from healthpredict.core import storage
    from healthpredict.mlops import registry
    from healthpredict.pipelines import deployment

    newer = champion()  # version 2, promoted; the running API still serves version 1
    registry.promote("HealthPredict", newer.version)
    conf = {"dry_run": True, "api_url": api.url, "ecr_registry": REGISTRY, "verify_timeout": 3}
    run = load_dags()["health_predict_api_deployment"].test(run_conf=conf)
    assert run.state == "success", task_states(run)
    work = deployment.workdir(run.run_id)
    assert not work.exists(), "a dry run writes nothing"
    expected = deploy.deployment_steps(newer.version, deploy.DeploymentTarget(REGISTRY), work)
    for task_id, step in [
        ("build_image", "build"),
        ("push_image", "push"),
        ("deploy_to_minikube", "deploy"),
        ("wait_for_rollout", "rollout"),
    ]:
        pushed = xcom("health_predict_api_deployment", run.run_id, task_id)
        assert [r["argv"] for r in pushed] == expected[step] and all(r["dry_run"] for r in pushed)
    record = storage.read_json(deployment.deployment_record_uri(run.run_id))
    assert record["dry_run"] is True and record["version"] == newer.version
    assert record["image"] == f"{REGISTRY}/healthpredict-api:v{newer.version}"
    assert record["overlay"]["images"] == [
        {"name": "healthpredict-api", "newName": f"{REGISTRY}/healthpredict-api",
         "newTag": f"v{newer.version}"}
    ]  # fmt: skip
    recorded = [r["argv"] for step in deploy.STEPS for r in record["steps"][step]]
    assert recorded == [c for s in deploy.STEPS for c in expected[s]]
    assert f"models:/HealthPredict/{newer.version}" in recorded[0]
    # The live API serves version 1, not the champion: a dry run neither passes nor fails on
    # it, it says it verified nothing.
    verification = {
        "ok": None, "verified": False, "reason": "not verified: dry run", "api_url": api.url
    }  # fmt: skip
    assert record["verification"] == verification
    assert xcom("health_predict_api_deployment", run.run_id, "verify_model_info") == verification


@pytest.mark.slow
def test_a_real_run_without_the_tools_fails_at_the_first_step(airflow_db, api, tmp_path):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from dagtools import load_dags, task_states

    from healthpredict.pipelines import deployment

    # An empty PATH: whatever this machine has installed, nothing is built or deployed.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        conf = {"api_url": api.url, "ecr_registry": REGISTRY, "verify_timeout": 2}
        run = load_dags()["health_predict_api_deployment"].test(run_conf=conf)
    shutil.rmtree(deployment.workdir(run.run_id), ignore_errors=True)
    states = task_states(run)
    assert run.state == "failed" and states["build_image"] == "failed", states
    assert states["get_champion_version"] == "success"
    assert {states[t] for t in ("push_image", "deploy_to_minikube", "wait_for_rollout",
                                "verify_model_info")} == {"upstream_failed"}  # fmt: skip


@pytest.mark.slow
def test_verify_model_info_against_the_live_api(api):
    assert deploy_run.verify_model_info(api.url, "1", timeout=5, token=TOKEN)["version"] == "1"
    with pytest.raises(deploy_run.DeploymentError, match="serves model version 1, expected 9"):
        deploy_run.verify_model_info(api.url, 9, timeout=2, token=TOKEN)
    with pytest.raises(deploy_run.DeploymentError, match="serves model 'HealthPredict', expected"):
        deploy_run.verify_model_info(api.url, "1", timeout=2, model_name="Other", token=TOKEN)
    with pytest.raises(deploy_run.DeploymentError, match="HTTP 404"):
        deploy_run.verify_model_info(api.url + "/nope", "1", timeout=2, token=TOKEN)


def test_unreachable_api_fails_the_verification():
    from dagtools import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(deploy_run.DeploymentError, match=r"is unreachable: .*gave up after 2 s"):
        deploy_run.verify_model_info(url, "1", timeout=2)
