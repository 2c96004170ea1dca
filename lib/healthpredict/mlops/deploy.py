"""Deploying the champion: the commands that build, push and roll out the API.

One code path for a real Minikube with ECR and for a machine without a Docker engine or a
cluster; :class:`DeploymentTarget` chooses the tools:

- ``builder``: ``docker`` or ``podman`` (the project's store and settings,
  :mod:`healthpredict.mlops.containers`);
- ``registry_kind``: ``ecr`` (``aws ecr get-login-password`` | login, then push), ``plain`` (a
  registry without login, e.g. ``127.0.0.1:5000``; TLS is skipped for loopback only) or
  ``minikube`` (``minikube image load`` instead of a push);
- ``deployer``: ``kubectl`` (``kubectl apply -k`` of an overlay, ``kubectl rollout status``) or
  ``podman-kube`` (the overlay rendered with ``kubectl kustomize``, adapted by
  :mod:`healthpredict.mlops.kube_local`, played with ``podman kube play --replace``; the rollout
  waits for the pod's readiness probe).

The image carries exactly the champion's model: the build step exports ``models:/<name>/<N>``
into a folder that becomes the Dockerfile's named build context ``model``, and the tag ``v<N>``
names it. There is ONE rollout: an overlay kustomization (written by :func:`write_overlay`) sets
the image with kustomize ``images`` (and, for ECR, the Deployment's ``imagePullSecrets``), so
``kubectl apply -k`` changes the Deployment once.

Everything here decides *what* runs, as pure functions (:func:`deployment_steps`), so the DAG
and its tests agree on the exact argv lists; :mod:`healthpredict.mlops.deploy_run` runs them and
verifies the result.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from healthpredict.mlops import containers

DEFAULT_IMAGE_NAME = containers.SERVING_IMAGE
DEFAULT_NAMESPACE = "healthpredict"
DEFAULT_DEPLOYMENT = "healthpredict-api"
DEFAULT_CONTAINER = "api"
DEFAULT_KUBE_CONTEXT = "minikube"
DEFAULT_PULL_SECRET = "ecr-pull"
DEFAULT_HOST_PORT = 8000
DOCKERFILE = str(containers.SERVING_DOCKERFILE)
# The image name k8s/deployment.yaml uses; the overlay's kustomize `images` entry replaces it.
MANIFEST_IMAGE = containers.SERVING_IMAGE
# The Secret holding the API's token file (k8s/deployment.yaml mounts it).
TOKENS_SECRET = "healthpredict-api-tokens"
TOKENS_KEY = "tokens"
BUILDERS = ("docker", "podman")
REGISTRY_KINDS = ("ecr", "plain", "minikube")
DEPLOYERS = ("kubectl", "podman-kube")
# Deployment order; the DAG runs one task per step.
STEPS = ("build", "push", "deploy", "rollout")
_ECR_HOST = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?$"
)
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$")


def image_ref(registry: str, image_name: str, version: str | int) -> str:
    """Full image reference ``<registry>/<image_name>:v<version>``.

    Raises:
        ValueError: An empty registry or image name, or a version that is not a number.
    """
    registry, version = registry.strip().rstrip("/"), str(version).strip()
    if not registry or not image_name:
        raise ValueError("the image registry and image name must not be empty")
    if not version.isdigit():
        raise ValueError(f"model version must be a registry version number, got {version!r}")
    return f"{registry}/{containers.serving_tag(version, image_name)}"


def ecr_region(registry: str) -> str:
    """AWS region of an ECR registry host (``<account>.dkr.ecr.<region>.amazonaws.com``).

    Raises:
        ValueError: ``registry`` is not an ECR registry host.
    """
    match = _ECR_HOST.match(registry.strip().rstrip("/"))
    if match is None:
        raise ValueError(
            f"{registry!r} is not an ECR registry (<account>.dkr.ecr.<region>.amazonaws.com); "
            "pass region= for another registry name"
        )
    return match["region"]


@dataclass(frozen=True)
class DeploymentTarget:
    """Where and how the serving image is deployed.

    Attributes:
        registry: Image registry host (ECR, ``127.0.0.1:5000``, or a name for ``minikube``).
        image_name: Repository name inside the registry.
        k8s_dir: The kustomization the overlay builds on (relative to the project root).
        namespace: Kubernetes namespace of the API (the kustomization's).
        kube_context: kubectl context and minikube profile (``minikube``), so a deployment
            never lands on whatever cluster happens to be current; None uses the current one.
        deployment: Name of the API's Deployment.
        container: Name of the API container in that Deployment.
        rollout_timeout: How long the rollout may take (``180s``, ``5m``).
        dockerfile: Dockerfile of the serving image, relative to the project root.
        region: AWS region for ``aws ecr get-login-password``; default parsed from ``registry``.
        builder: ``docker`` or ``podman``.
        registry_kind: ``ecr``, ``plain`` or ``minikube``.
        deployer: ``kubectl`` or ``podman-kube``.
        base_image: The Dockerfile's ``BASE_IMAGE`` (None: the Dockerfile's default).
        pull_secret: ``imagePullSecrets`` entry the overlay adds for ECR (the deploy step
            refreshes that docker-registry Secret from ``aws ecr get-login-password``).
        host_port: ``podman-kube``: the API's port on 127.0.0.1.
        tokens_file: A token file (``healthpredict.serving.auth`` format) the overlay turns
            into the ``healthpredict-api-tokens`` Secret; None: the Secret is created by hand
            (docs/minikube.md).
        podman_store: Store of the ``podman`` builder and deployer (None: the project's,
            ``<HP_CACHE_DIR>/containers``).
    """

    registry: str
    image_name: str = DEFAULT_IMAGE_NAME
    k8s_dir: str = "k8s/"
    namespace: str = DEFAULT_NAMESPACE
    kube_context: str | None = DEFAULT_KUBE_CONTEXT
    deployment: str = DEFAULT_DEPLOYMENT
    container: str = DEFAULT_CONTAINER
    rollout_timeout: str = "180s"
    dockerfile: str = DOCKERFILE
    region: str | None = None
    builder: str = "docker"
    registry_kind: str = "ecr"
    deployer: str = "kubectl"
    base_image: str | None = None
    pull_secret: str = DEFAULT_PULL_SECRET
    host_port: int = DEFAULT_HOST_PORT
    tokens_file: str | None = None
    podman_store: str | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("builder", self.builder, BUILDERS),
            ("registry_kind", self.registry_kind, REGISTRY_KINDS),
            ("deployer", self.deployer, DEPLOYERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not re.fullmatch(r"\d+[smh]", self.rollout_timeout):
            raise ValueError(
                f"rollout_timeout must look like 180s, 5m or 1h, got {self.rollout_timeout!r}"
            )

    @property
    def host(self) -> str:
        """The registry host without a trailing slash."""
        return self.registry.strip().rstrip("/")

    def podman(self) -> containers.Podman:
        """The podman of the builder / deployer (its store and settings)."""
        if self.podman_store:
            return containers.Podman(Path(self.podman_store))
        return containers.default_podman()

    def rollout_seconds(self) -> int:
        """``rollout_timeout`` in seconds."""
        number, unit = int(self.rollout_timeout[:-1]), self.rollout_timeout[-1]
        return number * {"s": 1, "m": 60, "h": 3600}[unit]


@dataclass(frozen=True)
class WorkDir:
    """The files of one deployment (exported model, overlay, rendered and played manifests)."""

    root: Path

    @property
    def model(self) -> Path:
        """The exported model folder (the build context ``model``)."""
        return self.root / "model"

    @property
    def overlay(self) -> Path:
        """The overlay kustomization folder."""
        return self.root / "overlay"

    @property
    def rendered(self) -> Path:
        """``kubectl kustomize`` output of the overlay."""
        return self.root / "rendered.yaml"

    @property
    def played(self) -> Path:
        """The manifest ``podman kube play`` runs."""
        return self.root / "played.yaml"

    @property
    def secrets(self) -> Path:
        """Secret files of the played pod (hostPath volumes)."""
        return self.root / "secrets"

    @property
    def image_tar(self) -> Path:
        """The image archive ``minikube image load`` reads."""
        return self.root / "image.tar"


def overlay_kustomization(
    version: str | int, target: DeploymentTarget, k8s_dir: Path, overlay_dir: Path
) -> dict[str, Any]:
    """The overlay: the project's kustomization with the image ``v<version>`` set once.

    Args:
        version: The champion's version (the image tag ``v<version>``).
        target: Registry, image and pull settings.
        k8s_dir: The base kustomization (absolute).
        overlay_dir: Where the overlay is written (kustomize wants relative resource paths).
    """
    ref = image_ref(target.registry, target.image_name, version)
    name, _, tag = ref.rpartition(":")
    overlay: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": target.namespace,
        "resources": [os.path.relpath(k8s_dir, overlay_dir)],
        "images": [{"name": MANIFEST_IMAGE, "newName": name, "newTag": tag}],
    }
    if target.registry_kind == "ecr" and target.deployer == "kubectl":
        patch = [
            {
                "op": "add",
                "path": "/spec/template/spec/imagePullSecrets",
                "value": [{"name": target.pull_secret}],
            }
        ]
        overlay["patches"] = [
            {
                "target": {"kind": "Deployment", "name": target.deployment},
                "patch": yaml.safe_dump(patch, sort_keys=False),
            }
        ]
    if target.tokens_file:
        overlay["secretGenerator"] = [
            {
                "name": TOKENS_SECRET,
                "files": [f"{TOKENS_KEY}={TOKENS_KEY}"],  # copied next to the overlay
                "options": {"disableNameSuffixHash": True},
            }
        ]
    return overlay


def write_overlay(
    version: str | int, target: DeploymentTarget, workdir: WorkDir, root: Path
) -> Path:
    """Write the overlay folder (kustomization and, if configured, the token file)."""
    workdir.overlay.mkdir(parents=True, exist_ok=True)
    k8s_dir = (root / target.k8s_dir).resolve()
    overlay = overlay_kustomization(version, target, k8s_dir, workdir.overlay.resolve())
    (workdir.overlay / "kustomization.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    if target.tokens_file:
        tokens = workdir.overlay / TOKENS_KEY
        tokens.write_bytes(Path(target.tokens_file).read_bytes())
        tokens.chmod(0o600)
    return workdir.overlay


def _python_module(module: str, *args: str) -> list[str]:
    """The argv running a module of this package with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", module, *map(str, args)]


def _build(
    version: str, target: DeploymentTarget, image: str, work: WorkDir, root: Path, model_name: str
) -> list[list[str]]:
    # Exactly this version, not the alias: the alias may move while the deployment runs.
    export = _python_module(
        "healthpredict.cli",
        "export-model",
        "--model-uri",
        f"models:/{model_name}/{version}",
        "--out",
        str(work.model),
    )
    if target.builder == "podman":
        build = containers.serving_build_argv(
            target.podman(),
            work.model,
            image,
            base_image=target.base_image or containers.OFFICIAL_BASE,
            version=version,
            root=root,
        )
    else:
        build = ["docker", "build", "-f", target.dockerfile, "--build-context"]
        build += [f"model={work.model}", "--build-arg", f"MODEL_VERSION={version}"]
        if target.base_image:
            build += ["--build-arg", f"BASE_IMAGE={target.base_image}"]
        build += ["-t", image, "."]
    return [export, build]


def _container_cli(target: DeploymentTarget) -> list[str]:
    return target.podman().argv() if target.builder == "podman" else ["docker"]


def _ecr_password(target: DeploymentTarget) -> str:
    region = target.region or ecr_region(target.host)
    return f"aws ecr get-login-password --region {shlex.quote(region)}"


def _push(target: DeploymentTarget, image: str, work: WorkDir) -> list[list[str]]:
    cli = _container_cli(target)
    if target.registry_kind == "minikube":
        profile = ["-p", target.kube_context] if target.kube_context else []
        if target.builder == "podman":  # minikube cannot read podman's store: go through a tar
            return [
                [*cli, "save", "--format", "docker-archive", "-o", str(work.image_tar), image],
                ["minikube", *profile, "image", "load", str(work.image_tar)],
            ]
        return [["minikube", *profile, "image", "load", image]]
    if target.registry_kind == "ecr":
        # The password goes through a pipe, never argv; pipefail makes a failed `aws` fail it.
        login = (
            f"{_ecr_password(target)} | {shlex.join(cli)} login --username AWS "
            f"--password-stdin {shlex.quote(target.host)}"
        )
        return [["bash", "-o", "pipefail", "-c", login], [*cli, "push", image]]
    if target.builder == "podman" and _LOOPBACK.match(target.host):
        return [[*cli, "push", "--tls-verify=false", image]]  # plain HTTP on loopback only
    return [[*cli, "push", image]]


def _deploy(target: DeploymentTarget, work: WorkDir) -> list[list[str]]:
    if target.deployer == "podman-kube":
        adapt = _python_module(
            "healthpredict.mlops.kube_local",
            "adapt",
            work.rendered,
            work.played,
            "--host-port",
            target.host_port,
            "--secrets-dir",
            work.secrets,
            "--container",
            target.container,
        )
        play = target.podman().argv(
            "kube", "play", "--replace", "--network", "slirp4netns", str(work.played)
        )
        return [["kubectl", "kustomize", str(work.overlay), "-o", str(work.rendered)], adapt, play]
    context = ["--context", target.kube_context] if target.kube_context else []
    kubectl = ["kubectl", *context]
    commands = []
    if target.registry_kind == "ecr":
        # The pull Secret of the overlay's imagePullSecrets, refreshed on every deployment:
        # an ECR password lasts 12 hours. It is built in bash (printf is a builtin), so the
        # password never appears in a process's argv; the namespace must exist first.
        kubectl_q = shlex.join(kubectl)
        namespace = shlex.quote(target.namespace)
        config = (
            f'printf \'{{"auths":{{"%s":{{"auth":"%s"}}}}}}\' {shlex.quote(target.host)} '
            f'"$(printf \'AWS:%s\' "$({_ecr_password(target)})" | base64 -w0)"'
        )
        commands += [
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f"{kubectl_q} create namespace {namespace} --dry-run=client -o yaml"
                f" | {kubectl_q} apply -f -",
            ],
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f"{config} | {kubectl_q} -n {namespace} create secret generic "
                f"{shlex.quote(target.pull_secret)} --type=kubernetes.io/dockerconfigjson "
                "--from-file=.dockerconfigjson=/dev/stdin --dry-run=client -o yaml"
                f" | {kubectl_q} apply -f -",
            ],
        ]
    commands.append([*kubectl, "-n", target.namespace, "apply", "-k", str(work.overlay)])
    return commands


def _rollout(target: DeploymentTarget, work: WorkDir) -> list[list[str]]:
    if target.deployer == "podman-kube":
        wait = _python_module(
            "healthpredict.mlops.kube_local",
            "wait",
            work.played,
            "--timeout",
            target.rollout_seconds(),
            "--podman-store",
            target.podman().store,
        )
        return [wait]
    context = ["--context", target.kube_context] if target.kube_context else []
    return [
        [
            "kubectl",
            *context,
            "-n",
            target.namespace,
            "rollout",
            "status",
            f"deployment/{target.deployment}",
            f"--timeout={target.rollout_timeout}",
        ]
    ]


def deployment_steps(
    version: str | int,
    target: DeploymentTarget,
    workdir: str | Path = "deploy-work",
    *,
    model_name: str = "HealthPredict",
    root: Path | None = None,
) -> dict[str, list[list[str]]]:
    """The commands of each deployment step, in :data:`STEPS` order; run from the project root.

    Args:
        version: Registry version of the champion; the image tag is ``v<version>``.
        target: Builder, registry, deployer and their settings.
        workdir: Folder of this deployment's files (:class:`WorkDir`).
        model_name: Registered model whose version ``version`` is exported into the image.
        root: Project root (the build context; default: the project's).

    Returns:
        ``{"build": [...], "push": [...], "deploy": [...], "rollout": [...]}``, each a list of
        argv lists.

    Raises:
        ValueError: Bad version, registry or settings.
    """
    from healthpredict.core.settings import project_root

    version = str(version).strip()
    image = image_ref(target.registry, target.image_name, version)
    if target.registry_kind == "ecr":
        _ecr_password(target)  # a registry that is not ECR, without region=, fails here
    root = root or project_root()
    work = WorkDir(Path(workdir))
    return {
        "build": _build(version, target, image, work, root, model_name),
        "push": _push(target, image, work),
        "deploy": _deploy(target, work),
        "rollout": _rollout(target, work),
    }


def deployment_commands(version: str | int, target: DeploymentTarget, **kwargs) -> list[list[str]]:
    """Every deployment command in order (see :func:`deployment_steps`)."""
    steps = deployment_steps(version, target, **kwargs)
    return [command for step in STEPS for command in steps[step]]


def teardown_commands(target: DeploymentTarget, workdir: str | Path) -> list[list[str]]:
    """What removes a deployment again (the pod of ``podman-kube``, or the overlay's objects)."""
    work = WorkDir(Path(workdir))
    if target.deployer == "podman-kube":
        return [target.podman().argv("kube", "down", str(work.played))]
    context = ["--context", target.kube_context] if target.kube_context else []
    return [["kubectl", *context, "delete", "-k", str(work.overlay), "--ignore-not-found"]]
