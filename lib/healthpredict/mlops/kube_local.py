"""Play the rendered Kubernetes manifests as a local pod with ``podman kube play``.

There is no Kubernetes API server on a machine without a cluster; ``podman kube play`` runs a
Deployment's pod spec (image, command, env, ConfigMap, probes' paths, security context,
volumes) as a local pod. :func:`adapt` changes ``kubectl kustomize`` output only in what
podman 4.3 needs, and says what it changed:

- it keeps the Deployment, its ConfigMaps and Secrets, and drops the kinds podman cannot play
  (Namespace, Service, HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy, ...);
- one replica;
- the API's container port is published on ``hostIP: 127.0.0.1`` and a given ``hostPort``
  (played with ``--network slirp4netns``: podman refuses port mappings with ``--network host``);
- Secret volumes become read-only ``hostPath`` folders holding the Secret's keys as files.
  podman 4.3.1's own Secret volumes are not usable: a volume without ``optional`` crashes
  ``kube play`` (nil pointer), ``stringData`` is ignored, ``data`` reaches the file still
  base64-encoded, and the backing volume outlives ``kube down`` (a rotated token would not
  arrive). A Secret volume with no Secret document is dropped when ``optional`` (as Kubernetes
  would start the pod) and refused otherwise.

This checks the pod spec, the image, the probes and the env, not the Kubernetes control plane
(no scheduler, rollout controller, Service, HPA or NetworkPolicy is exercised).

Run as ``python -m healthpredict.mlops.kube_local adapt|wait ...`` so the deployment's steps
stay argv lists that a dry run records and a person can paste.
"""

from __future__ import annotations

import argparse
import base64
import copy
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from healthpredict.mlops import containers

PLAYABLE_KINDS = frozenset({"Deployment", "ConfigMap", "Secret"})
# podman kube play refuses port mappings with --network host; slirp4netns publishes them.
NETWORK = "slirp4netns"
HOST_IP = "127.0.0.1"


class KubeLocalError(RuntimeError):
    """The manifests cannot be played locally; the message names the document or field."""


@dataclass
class Adapted:
    """What :func:`adapt` produced: the documents to play and every change it made."""

    documents: list[dict[str, Any]]
    changes: list[str] = field(default_factory=list)
    secret_files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content

    @property
    def deployment(self) -> dict[str, Any]:
        """The Deployment document."""
        return next(d for d in self.documents if d["kind"] == "Deployment")


def _secret_items(doc: dict[str, Any]) -> dict[str, bytes]:
    items = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
    items.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
    return items


def _resolve_port(container: dict[str, Any], port: Any) -> int:
    """A probe's port as a number (a named port is looked up in the container's ports)."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise KubeLocalError(f"container {container['name']!r} has no port named {port!r}")


def adapt(
    documents: Iterable[dict[str, Any]],
    *,
    host_port: int,
    secrets_dir: str | Path,
    container: str | None = None,
) -> Adapted:
    """Adapt rendered manifests for ``podman kube play`` (see the module docstring).

    Args:
        documents: The rendered documents (``kubectl kustomize`` output).
        host_port: Port on 127.0.0.1 that publishes the API container's first port.
        secrets_dir: Folder the Secret volumes' files are written to (by :func:`write`);
            each Secret becomes ``<secrets_dir>/<name>/<key>``.
        container: Name of the API container (default: the first one).

    Returns:
        The documents to play, the changes made (one line each) and the secret files to write.

    Raises:
        KubeLocalError: No single Deployment, no such container or port, or a required
            Secret that no document provides.
    """
    docs = [copy.deepcopy(d) for d in documents if d]
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        names = [d["metadata"]["name"] for d in deployments]
        raise KubeLocalError(f"expected exactly one Deployment to play, found {names}")
    result = Adapted([])
    dropped = sorted(
        {f"{d['kind']}/{d['metadata']['name']}" for d in docs}
        - {f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in PLAYABLE_KINDS}
    )
    if dropped:
        result.changes.append(f"dropped (podman kube play cannot play them): {', '.join(dropped)}")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    (deployment,) = deployments
    spec = deployment["spec"]
    if spec.get("replicas", 1) != 1:
        result.changes.append(f"replicas {spec['replicas']} -> 1")
    spec["replicas"] = 1
    pod = spec["template"]["spec"]
    pod_containers = pod["containers"]
    api = next((c for c in pod_containers if container in (None, c["name"])), None)
    if api is None:
        raise KubeLocalError(f"the Deployment has no container {container!r}")
    if not api.get("ports"):
        raise KubeLocalError(f"container {api['name']!r} declares no port to publish")
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        http = (api.get(probe_name) or {}).get("httpGet")
        if http and not isinstance(http.get("port"), int):
            http["port"] = _resolve_port(api, http["port"])
            result.changes.append(f"{probe_name} port named -> {http['port']}")
    first = api["ports"][0]
    first.update(hostPort=int(host_port), hostIP=HOST_IP)
    result.changes.append(
        f"container port {first['containerPort']} published on {HOST_IP}:{host_port}"
    )
    volumes, dropped_volumes = [], set()
    secrets_dir = Path(secrets_dir)
    for volume in pod.get("volumes", []):
        source = volume.get("secret")
        if source is None:
            volumes.append(volume)
            continue
        name = source["secretName"]
        if name not in secrets:
            if source.get("optional"):
                dropped_volumes.add(volume["name"])
                result.changes.append(f"optional Secret {name} absent: volume dropped")
                continue
            raise KubeLocalError(
                f"volume {volume['name']!r} needs Secret {name!r}, which no document provides"
            )
        items = _secret_items(secrets[name])
        wanted = source.get("items") or [{"key": k, "path": k} for k in items]
        for item in wanted:
            if item["key"] not in items:
                raise KubeLocalError(f"Secret {name!r} has no key {item['key']!r}")
            result.secret_files[f"{name}/{item['path']}"] = items[item["key"]]
        volumes.append(
            {
                "name": volume["name"],
                "hostPath": {"path": str(secrets_dir / name), "type": "Directory"},
            }
        )
        result.changes.append(f"Secret volume {name} -> read-only hostPath {secrets_dir / name}")
    pod["volumes"] = volumes
    for item in pod_containers:
        mounts = [m for m in item.get("volumeMounts", []) if m["name"] not in dropped_volumes]
        for mount in mounts:
            if any(v["name"] == mount["name"] and "hostPath" in v for v in volumes):
                mount["readOnly"] = True
        item["volumeMounts"] = mounts
    result.documents = [d for d in docs if d["kind"] in {"ConfigMap"}] + [
        deployment
    ]  # Secrets become files; ConfigMaps must precede the Deployment
    return result


def write(adapted: Adapted, manifest: str | Path, secrets_dir: str | Path) -> Path:
    """Write the adapted manifest and the secret files.

    Folders 0755 and files 0644: the pod's non-root user must read them, as it reads a
    Kubernetes Secret volume. Returns the manifest's path.
    """
    secrets_dir = Path(secrets_dir)
    for relative, content in adapted.secret_files.items():
        path = secrets_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_bytes(content)
        path.chmod(0o644)
    manifest = Path(manifest)
    manifest.write_text(yaml.safe_dump_all(adapted.documents, sort_keys=False))
    return manifest


def _played_deployment(manifest: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment of an adapted manifest and its API container (the one with a hostPort)."""
    docs = list(yaml.safe_load_all(Path(manifest).read_text()))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        if any("hostPort" in port for port in item.get("ports", [])):
            return deployment, item
    raise KubeLocalError(f"{manifest} publishes no port (was it adapted?)")


def published_url(manifest: str | Path) -> str:
    """``http://127.0.0.1:<hostPort>`` of the adapted manifest's API container."""
    port = next(p for p in _played_deployment(manifest)[1]["ports"] if "hostPort" in p)
    return f"http://{port.get('hostIP', HOST_IP)}:{port['hostPort']}"


def probe_paths(manifest: str | Path) -> dict[str, str]:
    """``{"readinessProbe": "/ready", ...}``: the HTTP probes of the API container."""
    api = _played_deployment(manifest)[1]
    probes = ("readinessProbe", "livenessProbe", "startupProbe")
    return {
        name: api[name]["httpGet"].get("path", "/")
        for name in probes
        if (api.get(name) or {}).get("httpGet")
    }


def pod_container(manifest: str | Path) -> str:
    """Name podman gives the API container of the played Deployment (``<name>-pod-0-<ctr>``)."""
    deployment, api = _played_deployment(manifest)
    return f"{deployment['metadata']['name']}-pod-0-{api['name']}"


def wait_ready(
    manifest: str | Path,
    timeout: float = 180,
    *,
    podman: containers.Podman | None = None,
    log=print,
) -> float:
    """Wait until the played pod's readiness probe path answers 200 on its host port.

    Podman 4.3 does not run readiness probes itself; this is the probe, done from the host. A
    container that exited fails at once, with the end of its log.

    Returns:
        Seconds it took.

    Raises:
        KubeLocalError: Not ready within ``timeout`` (the last answer is named), or the
            container exited or is not there.
    """
    url = published_url(manifest) + probe_paths(manifest).get("readinessProbe", "/")
    podman = podman or containers.default_podman()
    try:
        seconds = round(podman.wait_ready(pod_container(manifest), url, timeout, interval=1), 2)
    except containers.ContainerError as exc:
        raise KubeLocalError(str(exc)) from None
    log(f"{url} ready after {seconds} s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """``adapt RENDERED OUT --host-port N --secrets-dir DIR`` | ``wait MANIFEST [--timeout S]``."""
    parser = argparse.ArgumentParser(prog="python -m healthpredict.mlops.kube_local")
    sub = parser.add_subparsers(dest="command", required=True)
    p_adapt = sub.add_parser("adapt", help="adapt kubectl kustomize output for podman kube play")
    p_adapt.add_argument("rendered")
    p_adapt.add_argument("out")
    p_adapt.add_argument("--host-port", type=int, required=True)
    p_adapt.add_argument("--secrets-dir", required=True)
    p_adapt.add_argument("--container", default=None)
    p_wait = sub.add_parser("wait", help="wait for the played pod's readiness probe")
    p_wait.add_argument("manifest")
    p_wait.add_argument("--timeout", type=float, default=180)
    p_wait.add_argument("--podman-store", default=None, help="the store (default: the project's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "adapt":
            docs = list(yaml.safe_load_all(Path(args.rendered).read_text()))
            adapted = adapt(
                docs,
                host_port=args.host_port,
                secrets_dir=args.secrets_dir,
                container=args.container,
            )
            write(adapted, args.out, args.secrets_dir)
            for change in adapted.changes:
                print(f"adapted for podman: {change}")
        else:
            podman = containers.Podman(Path(args.podman_store)) if args.podman_store else None
            wait_ready(args.manifest, args.timeout, podman=podman)
    except KubeLocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
