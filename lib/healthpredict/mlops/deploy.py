"""Deploying the champion: the commands that build, push and roll out the API, and the checks.

Everything that decides *what* runs is a pure function here (:func:`deployment_steps`,
:func:`deployment_commands`), so the deployment DAG and its tests agree on the exact argv
lists. :func:`run_commands` executes them, or in dry-run mode only records them, and
:func:`verify_model_info` asks the running API which model it serves. Every check fails
closed: a missing tool, a non-zero exit, an unreachable API or a wrong version raises
:class:`DeploymentError` with the command or URL in the message.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

DEFAULT_IMAGE_NAME = "healthpredict-api"
DEFAULT_NAMESPACE = "healthpredict"
DEFAULT_DEPLOYMENT = "healthpredict-api"
DEFAULT_CONTAINER = "api"
DEFAULT_KUBE_CONTEXT = "minikube"
DOCKERFILE = "serving/Dockerfile"
# Deployment order; the DAG runs one task per step.
STEPS = ("build", "push", "deploy", "rollout")
_ECR_HOST = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?$"
)
# /model-info field names tried in order (the serving app's own name first).
VERSION_KEYS = ("version", "model_version")


class DeploymentError(RuntimeError):
    """A deployment command or check failed; the message names the command or URL."""


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
    return f"{registry}/{image_name}:v{version}"


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
        registry: Image registry host, normally ECR.
        image_name: Repository name inside the registry.
        k8s_dir: Kustomize folder applied with ``kubectl apply -k``.
        namespace: Kubernetes namespace of the API (must match the kustomization's, if set).
        kube_context: kubectl context (``minikube``), so a deployment never lands on whatever
            cluster happens to be current; None uses the current context.
        deployment: Name of the API's Deployment.
        container: Name of the API container in that Deployment.
        rollout_timeout: How long ``kubectl rollout status`` waits (``180s``).
        dockerfile: Dockerfile of the serving image, relative to the project root.
        region: AWS region for ``aws ecr get-login-password``; default parsed from ``registry``.
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


def deployment_steps(version: str | int, target: DeploymentTarget) -> dict[str, list[list[str]]]:
    """The commands of each deployment step, in :data:`STEPS` order; run from the project root.

    Args:
        version: Registry version of the champion; the image tag is ``v<version>``.
        target: Registry, image, cluster and rollout settings.

    Returns:
        ``{"build": [...], "push": [...], "deploy": [...], "rollout": [...]}``, each a list of
        argv lists.

    Raises:
        ValueError: Bad version, registry or timeout.
    """
    t = target
    image = image_ref(t.registry, t.image_name, version)
    host = t.registry.strip().rstrip("/")
    region = t.region or ecr_region(host)
    if not re.fullmatch(r"\d+[smh]", t.rollout_timeout):
        raise ValueError(
            f"rollout_timeout must look like 180s, 5m or 1h, got {t.rollout_timeout!r}"
        )
    context = ["--context", t.kube_context] if t.kube_context else []
    kubectl = ["kubectl", *context, "-n", t.namespace]
    # The password goes through a pipe, never argv; pipefail makes a failed `aws` fail the step.
    login = (
        f"aws ecr get-login-password --region {shlex.quote(region)} | "
        f"docker login --username AWS --password-stdin {shlex.quote(host)}"
    )
    return {
        "build": [["docker", "build", "-f", t.dockerfile, "-t", image, "."]],
        "push": [["bash", "-o", "pipefail", "-c", login], ["docker", "push", image]],
        "deploy": [
            [*kubectl, "apply", "-k", t.k8s_dir],
            [*kubectl, "set", "image", f"deployment/{t.deployment}", f"{t.container}={image}"],
        ],
        "rollout": [
            [
                *kubectl,
                "rollout",
                "status",
                f"deployment/{t.deployment}",
                f"--timeout={t.rollout_timeout}",
            ]
        ],
    }


def deployment_commands(version: str | int, target: DeploymentTarget) -> list[list[str]]:
    """Every deployment command in order (see :func:`deployment_steps`)."""
    steps = deployment_steps(version, target)
    return [command for step in STEPS for command in steps[step]]


def run_commands(
    commands: Sequence[Sequence[str]],
    *,
    dry_run: bool,
    cwd: str | Path | None = None,
    timeout: float = 1800,
    log=print,
) -> list[dict[str, Any]]:
    """Run commands one after the other, stopping at the first failure; or only record them.

    Args:
        commands: argv lists.
        dry_run: Print and record the commands without running anything.
        cwd: Working folder of the commands (the project root for ``docker build .``).
        timeout: Seconds each command may take.
        log: Where progress lines go (the task log).

    Returns:
        One record per command: ``argv``, ``display`` (shell-quoted), ``dry_run``, and for a
        real run ``returncode`` and ``seconds``.

    Raises:
        DeploymentError: A command is not installed, timed out or exited non-zero (the
            message holds the command and the end of its output).
    """
    records = []
    for argv in commands:
        argv = [str(a) for a in argv]
        record: dict[str, Any] = {"argv": argv, "display": shlex.join(argv), "dry_run": dry_run}
        if dry_run:
            log(f"[dry run] {record['display']}")
            records.append(record)
            continue
        log(f"$ {record['display']}")
        start = time.monotonic()
        try:
            done = subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise DeploymentError(f"{argv[0]} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"timed out after {timeout:.0f} s: {record['display']}") from None
        record.update(returncode=done.returncode, seconds=round(time.monotonic() - start, 3))
        output = (done.stdout or "") + (done.stderr or "")
        if output.strip():
            log(output.rstrip())
        if done.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise DeploymentError(
                f"exit code {done.returncode}: {record['display']}" + (f"\n{tail}" if tail else "")
            )
        records.append(record)
    return records


def reported_version(body: Any) -> str | None:
    """The model version a ``/model-info`` body reports (see :data:`VERSION_KEYS`), or None."""
    if not isinstance(body, dict):
        return None
    for key in VERSION_KEYS:
        if body.get(key) is not None:
            return str(body[key])
    nested = body.get("model")
    return reported_version(nested) if isinstance(nested, dict) else None


def verify_model_info(
    api_url: str,
    expected_version: str | int,
    timeout: float = 60,
    *,
    model_name: str | None = None,
) -> dict:
    """Wait until the API at ``api_url`` reports ``expected_version`` on ``GET /model-info``.

    Connection errors, server errors and a different version are retried until ``timeout``
    seconds have passed (a rollout may still be swapping pods); then the last problem is
    raised. A client error (4xx) fails at once: the URL is wrong.

    Args:
        api_url: Base URL of the API (``http://127.0.0.1:8000``).
        expected_version: Registry version the API must serve.
        timeout: Seconds to keep trying.
        model_name: When given, the reported ``name`` must be this registered model too.

    Returns:
        The ``/model-info`` body.

    Raises:
        DeploymentError: The API was unreachable, answered with an error or no version, or
            kept reporting another version.
    """
    url = api_url.rstrip("/") + "/model-info"
    expected = str(expected_version)
    deadline = time.monotonic() + timeout
    problem = "no request was made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = requests.get(url, timeout=max(1.0, min(10.0, remaining)))
        except requests.RequestException as exc:
            problem = f"{url} is unreachable: {type(exc).__name__}: {exc}"
        else:
            if 400 <= response.status_code < 500:
                raise DeploymentError(
                    f"{url} answered HTTP {response.status_code}: {response.text[:300]}"
                )
            if response.status_code >= 500:
                problem = f"{url} answered HTTP {response.status_code}: {response.text[:300]}"
            else:
                try:
                    body = response.json()
                except json.JSONDecodeError:
                    raise DeploymentError(
                        f"{url} did not answer JSON: {response.text[:300]}"
                    ) from None
                version = reported_version(body)
                if version is None:
                    raise DeploymentError(
                        f"{url} reports no model version (looked for {', '.join(VERSION_KEYS)}): "
                        f"{json.dumps(body)[:300]}"
                    )
                name = body.get("name") or body.get("model_name")
                if model_name and name and name != model_name:
                    raise DeploymentError(f"{url} serves model {name!r}, expected {model_name!r}")
                if version == expected:
                    return body
                problem = f"{url} serves model version {version}, expected {expected}"
        if time.monotonic() + 1 > deadline:
            raise DeploymentError(f"{problem} (gave up after {timeout:.0f} s)")
        time.sleep(1)
