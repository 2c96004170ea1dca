"""The Kubernetes manifests run: `k8s/` rendered by kustomize, adapted, played as a local pod.

What this checks: the pod spec of `k8s/deployment.yaml` as `kubectl kustomize` renders it (with
the deployment's overlay: the image tag `v<N>` set by kustomize `images`, the token Secret
generated), the serving image with its baked model, the probes' paths, the env from the
ConfigMap and the Secret's file, all run by `podman kube play` on 127.0.0.1.

What it does NOT check: the Kubernetes control plane. There is no API server, scheduler,
rollout controller, Service, HorizontalPodAutoscaler, PodDisruptionBudget or NetworkPolicy here
(`healthpredict.mlops.kube_local` drops those kinds and says so); podman does not enforce
`runAsNonRoot` the way the kubelet does, and it runs no readiness probe itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = "healthpredict-api-playtest"  # not the tags other tests or `make image-test` use
TOKEN = "play-test-token"  # test-only secret  # noqa: S105


def require_local_kube() -> None:
    """Skip, naming the package, unless podman can play a pod here."""
    for binary, package in (
        ("podman", "podman"),
        ("catatonit", "catatonit (podman's pause process)"),
        ("slirp4netns", "slirp4netns"),
        ("kubectl", "kubectl"),
    ):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (apt-get install {package})")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def played(tmp_path_factory, settings_isolation, synthetic_champion):
    """The champion baked into an image, the overlay of k8s/ rendered, adapted and played."""
    require_local_kube()
    from healthpredict.mlops import containers, deploy, deploy_run
    from healthpredict.serving import auth
    from healthpredict.serving.model_store import export_model

    base = tmp_path_factory.mktemp("play")
    podman = containers.default_podman()
    with pytest.MonkeyPatch.context() as patch:
        settings_isolation(patch, base)
        champion = synthetic_champion(2000)
        version = champion.info.version
        model = export_model(f"models:/HealthPredict/{version}", base / "model")
    tokens = base / "tokens"
    tokens.write_text(auth.token_line("play-test", TOKEN) + "\n")
    target = deploy.DeploymentTarget(
        "localhost",
        IMAGE_NAME,
        builder="podman",
        registry_kind="plain",
        deployer="podman-kube",
        host_port=free_port(),
        tokens_file=str(tokens),
    )
    image = deploy.image_ref(target.registry, target.image_name, version)
    work = deploy.WorkDir(base / "work")
    containers.build_serving_image(podman, model, image)
    try:
        deploy.write_overlay(version, target, work, ROOT)
        steps = deploy.deployment_steps(version, target, work.root, root=ROOT)
        try:
            deploy_run.run_commands(steps["deploy"] + steps["rollout"], dry_run=False, cwd=ROOT)
            yield {"version": version, "target": target, "work": work, "image": image}
        finally:
            deploy_run.run_commands(deploy.teardown_commands(target, work.root), dry_run=False)
            assert f"{target.deployment}-pod-0" not in podman.run(
                "pod", "ps", "--format", "{{.Name}}"
            )
    finally:
        podman.remove_image(image)


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_adapted_manifest_differs_only_in_what_podman_needs(played):
    work = played["work"]
    rendered = {d["kind"]: d for d in _documents(work.rendered)}
    adapted = {d["kind"]: d for d in _documents(work.played)}
    assert set(rendered) >= {"Namespace", "Service", "HorizontalPodAutoscaler", "Deployment"}
    assert set(adapted) == {"ConfigMap", "Deployment"}  # the Secret became a read-only folder
    before = rendered["Deployment"]["spec"]["template"]["spec"]
    after = adapted["Deployment"]["spec"]["template"]["spec"]
    assert rendered["Deployment"]["spec"]["replicas"] >= 1
    assert adapted["Deployment"]["spec"]["replicas"] == 1
    (api_before,) = before["containers"]
    (api_after,) = after["containers"]
    # One rollout: the overlay's kustomize `images` entry set the tag that names the version.
    assert api_before["image"] == played["image"] == api_after["image"]
    port = api_after["ports"][0]
    assert port["hostIP"] == "127.0.0.1" and port["hostPort"] == played["target"].host_port
    for key in ("command", "args", "env", "envFrom", "securityContext", "resources"):
        assert api_before.get(key) == api_after.get(key), key
    for probe in ("readinessProbe", "livenessProbe"):  # a named port became its number
        assert api_before[probe]["httpGet"]["path"] == api_after[probe]["httpGet"]["path"]
    assert after["securityContext"] == before["securityContext"]


def test_the_pod_serves_the_baked_version_and_its_probes_pass(played):
    from healthpredict.mlops import kube_local

    work = played["work"]
    url = kube_local.published_url(work.played)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for probe, path in kube_local.probe_paths(work.played).items():
        response = requests.get(url + path, timeout=10)
        assert response.status_code == 200, (probe, path, response.text)
    info = requests.get(url + "/model-info", headers=headers, timeout=10)
    assert info.status_code == 200, info.text
    assert str(info.json()["version"]) == played["version"]
    assert info.json()["source"] == "/opt/model"  # the baked folder, not a registry


def test_the_pod_has_the_configmap_env_and_the_token_file(played):
    from healthpredict.mlops import containers, deploy

    work, target = played["work"], played["target"]
    podman = containers.default_podman()
    name = f"{target.deployment}-pod-0-{target.container}"
    env = dict(
        item.split("=", 1)
        for item in json.loads(podman.run("inspect", "--format", "{{json .Config.Env}}", name))
    )
    config = next(d for d in _documents(work.played) if d["kind"] == "ConfigMap")
    for key, value in config["data"].items():
        assert env.get(key) == value, key
    deployment = next(d for d in _documents(work.played) if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    for mount in api.get("volumeMounts", []):
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        if "hostPath" in volume and Path(volume["hostPath"]["path"]).name == deploy.TOKENS_SECRET:
            inside = podman.run("exec", name, "cat", f"{mount['mountPath']}/{deploy.TOKENS_KEY}")
            assert inside == Path(target.tokens_file).read_text()
            assert mount["readOnly"] is True


def test_a_pod_whose_container_exits_fails_the_rollout_at_once(tmp_path):
    require_local_kube()
    from healthpredict.mlops import containers, kube_local

    podman = containers.default_podman()
    base = containers.ensure_standin_base(podman)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "hp-exit-test"},
        "spec": {
            "selector": {"matchLabels": {"app": "hp-exit-test"}},
            "template": {
                "metadata": {"labels": {"app": "hp-exit-test"}},
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": base,
                            "command": ["/bin/sh", "-c", "echo model store unreachable; exit 3"],
                            "ports": [{"containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
                        }
                    ]
                },
            },
        },
    }
    adapted = kube_local.adapt([deployment], host_port=free_port(), secrets_dir=tmp_path)
    manifest = kube_local.write(adapted, tmp_path / "played.yaml", tmp_path)
    podman.run("kube", "play", "--replace", "--network", kube_local.NETWORK, str(manifest))
    try:
        with pytest.raises(kube_local.KubeLocalError, match="exited before .*\n.*unreachable"):
            kube_local.wait_ready(manifest, timeout=60, podman=podman)
    finally:
        podman.run("kube", "down", str(manifest))
    assert "hp-exit-test-pod-0" not in podman.run("pod", "ps", "--format", "{{.Name}}")
