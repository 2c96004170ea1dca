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

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
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
        argv = self.argv(*args)
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise ContainerError("podman is not installed (apt-get install podman)") from None
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
    ) -> list[str]:
        """The argv of an offline build (never pulls; the base must be in the store)."""
        args = ["build", "--pull=never", f"--network={self.network}", "-f", dockerfile, "-t", tag]
        if HOST_CA_BUNDLE.is_file():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        if target:
            args += ["--target", target]
        if ignorefile:
            args += ["--ignorefile", ignorefile]
        return self.argv(*args, context)


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
