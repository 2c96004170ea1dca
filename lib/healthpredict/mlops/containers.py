"""Daemonless container builds and runs with podman, in a project-local image store.

Every podman command goes through :class:`Podman`, so the store (``<cache_dir>/containers``,
kept between runs on one machine), the engine settings (``deploy/containers/containers.conf``:
runc and fixed ulimits, which sandboxes without a Docker engine need) and the network mode are
set in one place. Commands are argv lists starting with ``env CONTAINERS_CONF=...``, so a
recorded command can be pasted into a shell as it is.

Where no registry is reachable, :func:`ensure_standin_base` makes the base image offline from
Debian's mirror with ``debootstrap`` (Debian's Python 3.11; the Dockerfile's ``BASE_IMAGE``
argument says which base a build used).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from healthpredict.core.settings import get_settings, project_root

CONTAINERS_CONF = Path("deploy/containers/containers.conf")
OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
STANDIN_BASE = "localhost/healthpredict-python-standin:3.11-bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the stand-in base needs: Python with venv (pip comes with it) and the CA certificates.
STANDIN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# HTTPS to the package index may be re-signed by a proxy: builds see the host's CA bundle,
# mounted read-only, never copied into an image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ContainerError(RuntimeError):
    """A container command failed or is missing; the message names the command."""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Podman:
    """podman bound to one image store and the project's engine settings.

    Attributes:
        store: Folder of the image store (``storage/``) and its run state (``run/``).
        conf: The ``containers.conf`` every command reads.
        network: Network mode of builds and runs (``host``: sandboxes have no bridge).
    """

    store: Path
    conf: Path = field(default_factory=lambda: project_root() / CONTAINERS_CONF)
    network: str = "host"

    def argv(self, *args: str) -> list[str]:
        """The full argv of ``podman <args>`` in this store."""
        return [
            "env",
            f"CONTAINERS_CONF={self.conf}",
            "podman",
            "--root",
            str(self.store / "storage"),
            "--runroot",
            str(self.store / "run"),
            "--storage-driver",
            "overlay",
            *map(str, args),
        ]

    def run(self, *args: str, timeout: float = 900, stdin: bytes | None = None) -> str:
        """Run ``podman <args>`` and return its stdout.

        Raises:
            ContainerError: podman is missing, timed out or exited non-zero (with its output).
        """
        return self.execute(self.argv(*args), timeout=timeout, stdin=stdin)

    def execute(self, argv: list[str], timeout: float = 900, stdin: bytes | None = None) -> str:
        """Run a full argv made by :meth:`argv` or :meth:`build_argv`; return its stdout.

        Raises:
            ContainerError: podman is missing, timed out or exited non-zero (with its output).
        """
        if shutil.which("podman") is None:
            raise ContainerError("podman is not installed (apt-get install podman)")
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"timed out after {timeout:.0f} s: {shlex.join(argv)}") from None
        if done.returncode != 0:
            output = done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")
            raise ContainerError(
                f"exit code {done.returncode}: {shlex.join(argv)}\n{_tail(output)}"
            )
        return done.stdout.decode(errors="replace")

    def image_exists(self, ref: str) -> bool:
        """Whether ``ref`` is in the store."""
        argv = self.argv("image", "exists", ref)
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def image_mb(self, ref: str) -> float:
        """Size of an image in MB (10^6 bytes, as podman lists it)."""
        return round(int(self.run("image", "inspect", "--format", "{{.Size}}", ref)) / 1e6, 1)

    def build_argv(
        self,
        tag: str,
        *,
        dockerfile: str,
        context: str = ".",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        ignorefile: str | None = None,
        build_contexts: Mapping[str, str | Path] | None = None,
        image_format: str | None = None,
    ) -> list[str]:
        """The argv of an offline build (never pulls; the base must be in the store).

        Args:
            tag: Image reference to tag.
            dockerfile: The Dockerfile (relative to the working folder, or absolute).
            context: The main build context.
            build_args: ``--build-arg`` values.
            target: Stage to build (default: the last).
            ignorefile: The ``.dockerignore`` of the main context.
            build_contexts: Named build contexts (``--build-context name=folder``), which a
                Dockerfile reads with ``COPY --from=name``.
            image_format: ``docker`` keeps ``HEALTHCHECK`` (the OCI format has none); None:
                podman's default (``oci``).
        """
        args = ["build", "--pull=never", f"--network={self.network}", "-f", dockerfile, "-t", tag]
        if image_format:
            args += ["--format", image_format]
        if HOST_CA_BUNDLE.is_file():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for name, folder in (build_contexts or {}).items():
            args += ["--build-context", f"{name}={folder}"]
        if target:
            args += ["--target", target]
        if ignorefile:
            args += ["--ignorefile", ignorefile]
        return self.argv(*args, context)

    def run_detached(
        self,
        image: str,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str | Path, str]] = (),
    ) -> str:
        """Start a container in the background (host network); return its id.

        Args:
            image: Image reference.
            name: Container name (``podman rm`` it when done: see :meth:`remove`).
            env: Environment of the container.
            mounts: ``(host path, container path)`` pairs, mounted read-only.
        """
        args = ["run", "--detach", "--name", name, f"--network={self.network}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for host, inside in mounts:
            args += ["--volume", f"{host}:{inside}:ro"]
        return self.run(*args, image, timeout=120).strip()

    def exec_in(self, name: str, *command: str, timeout: float = 60) -> str:
        """Run ``command`` in a running container; return its stdout."""
        return self.run("exec", name, *command, timeout=timeout)

    def container_pid(self, name: str) -> int:
        """Host PID of a running container's main process (0 when it is not running)."""
        return int(self.run("inspect", "--format", "{{.State.Pid}}", name, timeout=60).strip())

    def stop_with_signal(self, name: str, signal: str = "TERM", timeout: float = 10) -> StopResult:
        """Send ``signal`` to a running container and time until its main process is gone.

        The time runs from the moment the signal is sent to the moment the process has exited
        (polled on the host's /proc every 10 ms), so podman's own start-up is not counted;
        ``podman wait`` then gives the exit code.

        Raises:
            ContainerError: The container was not running, or did not stop within ``timeout``
                (it is then killed).
        """
        pid = self.container_pid(name)
        if pid <= 0:
            raise ContainerError(f"container {name} is not running")
        self.run("kill", "--signal", signal, name, timeout=60)
        # Timed from just after the signal was delivered (podman kill returns once it is sent).
        sent = time.perf_counter()
        deadline = sent + timeout
        while _alive(pid):
            if time.perf_counter() > deadline:
                self.run("kill", "--signal", "KILL", name, timeout=60)
                raise ContainerError(
                    f"container {name} still running {timeout:.0f} s after SIG{signal}: killed"
                )
            time.sleep(0.01)
        seconds = time.perf_counter() - sent
        code = int(self.run("wait", name, timeout=60).strip().splitlines()[-1])
        return StopResult(seconds=seconds, exit_code=code)

    def wait_ready(self, name: str, url: str, timeout: float, interval: float = 0.05) -> float:
        """Poll ``url`` until it answers 200 while container ``name`` runs; return the seconds.

        Raises:
            ContainerError: The container is gone or exited, or ``url`` was not ready within
                ``timeout`` (the last answer and the container's log are in the message).
        """
        start = time.monotonic()
        problem = "no answer yet"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - start
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            state = self.run("inspect", "--format", "{{.State.Status}}", name, timeout=60).strip()
            if state in {"exited", "stopped"}:
                raise ContainerError(
                    f"container {name} exited before {url} was ready:\n{self.logs(name)}"
                )
            if time.monotonic() - start > timeout:
                raise ContainerError(
                    f"{url} not ready after {timeout:.0f} s (last: {problem}):\n{self.logs(name)}"
                )
            time.sleep(interval)

    def healthcheck(self, name: str) -> bool:
        """Run a container's ``HEALTHCHECK`` once; whether it passed (False also when it has none)."""
        argv = self.argv("healthcheck", "run", name)
        return subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0

    def logs(self, name: str, tail: int = 40) -> str:
        """The last lines a container printed (stdout and stderr); '' when it is gone."""
        try:
            done = subprocess.run(
                self.argv("logs", "--tail", str(tail), name), capture_output=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (done.stdout + done.stderr).decode(errors="replace")

    def remove(self, name: str) -> None:
        """Remove a container, running or not; no error when it does not exist."""
        self.run("rm", "--force", "--ignore", name, timeout=120)

    def remove_image(self, ref: str) -> None:
        """Remove an image tag (and the layers only it used); no error when it does not exist."""
        if self.image_exists(ref):
            self.run("rmi", "--force", ref, timeout=300)

    def image_label(self, ref: str, label: str) -> str | None:
        """The value of one label of an image (None when it has no such label)."""
        labels = json.loads(
            self.run("image", "inspect", "--format", "{{json .Labels}}", ref, timeout=60) or "null"
        )
        return (labels or {}).get(label)


@dataclass(frozen=True)
class StopResult:
    """How a container stopped on a signal: seconds from the signal to exit, and the exit code."""

    seconds: float
    exit_code: int


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def default_podman() -> Podman:
    """The podman of the project's store under the cache folder (``HP_CACHE_DIR``)."""
    return Podman(get_settings().cache_dir / "containers")


def ensure_standin_base(
    podman: Podman, ref: str = STANDIN_BASE, mirror: str = DEBIAN_MIRROR, log=print
) -> str:
    """Make the stand-in Python base image with debootstrap unless the store has it.

    Takes 1.5-3 minutes once per store; later calls return at once.

    Returns:
        ``ref``, the image to pass as the Dockerfile's ``BASE_IMAGE``.

    Raises:
        ContainerError: debootstrap is missing or failed, or the import failed.
    """
    if podman.image_exists(ref):
        return ref
    if shutil.which("debootstrap") is None:
        raise ContainerError("debootstrap is not installed (apt-get install debootstrap)")
    podman.store.mkdir(parents=True, exist_ok=True)
    log(f"making the stand-in base {ref} with debootstrap from {mirror} (once per store)")
    with tempfile.TemporaryDirectory(prefix="standin-", dir=podman.store) as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(STANDIN_PACKAGES)}",
            "bookworm",
            str(rootfs),
            mirror,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            raise ContainerError(
                f"exit code {done.returncode}: {shlex.join(argv)}\n{_tail(done.stdout + done.stderr)}"
            )
        # Package caches are dead weight in every image built on the base.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
            capture_output=True,
            check=True,
        )
        podman.run("import", "--change", "ENV=LANG=C.UTF-8", "-", ref, stdin=tar.stdout)
    return ref


# --------------------------------------------------------------------------- the serving image

SERVING_IMAGE = "healthpredict-api"
SERVING_DOCKERFILE = Path("serving/Dockerfile")
SERVING_IGNOREFILE = Path("serving/Dockerfile.dockerignore")
# The Dockerfile's default (last) stage: the model baked in from the build context "model".
SERVING_TARGET = "baked"
SERVING_UID = 10001
# The label the Dockerfile sets from its MODEL_VERSION argument.
VERSION_LABEL = "org.opencontainers.image.version"


def serving_tag(version: str | int, image: str = SERVING_IMAGE) -> str:
    """The tag of the image carrying model version ``version``: ``<image>:v<version>``."""
    return f"{image}:v{version}"


def model_dir_version(model_dir: str | Path) -> str:
    """The registry version recorded in an exported model folder (``model_info.json``).

    Raises:
        ContainerError: The folder has no readable ``model_info.json`` with a version.
    """
    from healthpredict.serving.model_store import INFO_FILE  # its writer: export_model

    path = Path(model_dir) / INFO_FILE
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, ValueError) as exc:
        raise ContainerError(
            f"{path}: no readable model info ({exc}); write the folder with healthpredict export-model"
        ) from None
    if not version:
        raise ContainerError(f"{path} names no model version")
    return str(version)


def serving_build_argv(
    podman: Podman,
    model_dir: str | Path,
    tag: str,
    *,
    base_image: str = STANDIN_BASE,
    version: str | None = None,
    root: Path | None = None,
) -> list[str]:
    """The argv that builds the serving image with ``model_dir`` baked in (absolute paths).

    Args:
        podman: The podman (store) to build in.
        model_dir: A folder written by ``healthpredict export-model`` (the build context
            ``model``).
        tag: Image reference, e.g. :func:`serving_tag` of the version.
        base_image: The Dockerfile's ``BASE_IMAGE`` (default: the offline stand-in).
        version: Model version for the image's label (default: read from ``model_dir``).
        root: Repository root, the main build context (default: the project root).
    """
    root = (root or project_root()).resolve()
    version = version or model_dir_version(model_dir)
    return podman.build_argv(
        tag,
        dockerfile=str(root / SERVING_DOCKERFILE),
        context=str(root),
        build_args={"BASE_IMAGE": base_image, "MODEL_VERSION": version},
        target=SERVING_TARGET,
        ignorefile=str(root / SERVING_IGNOREFILE),
        build_contexts={"model": Path(model_dir).resolve()},
        image_format="docker",  # keeps the Dockerfile's HEALTHCHECK
    )


def build_serving_image(
    podman: Podman,
    model_dir: str | Path,
    tag: str | None = None,
    *,
    base_image: str = STANDIN_BASE,
    timeout: float = 1800,
) -> str:
    """Build the serving image with ``model_dir`` baked in; return the tag.

    The stand-in base is made first when ``base_image`` is it and the store lacks it. Layers up
    to the model are cached in the store, so a rebuild for a new model takes seconds.

    Args:
        podman: The podman (store) to build in.
        model_dir: A folder written by ``healthpredict export-model``.
        tag: Image reference (default ``healthpredict-api:v<version of model_dir>``).
        base_image: The Dockerfile's ``BASE_IMAGE``.
        timeout: Seconds the build may take.

    Raises:
        ContainerError: The model folder has no version, the base is missing, or the build
            failed (the message holds the command and the end of its output).
    """
    version = model_dir_version(model_dir)
    tag = tag or serving_tag(version)
    if base_image == STANDIN_BASE:
        ensure_standin_base(podman)
    elif not podman.image_exists(base_image):
        raise ContainerError(f"base image {base_image} is not in the store {podman.store}")
    podman.execute(
        serving_build_argv(podman, model_dir, tag, base_image=base_image, version=version),
        timeout=timeout,
    )
    return tag
