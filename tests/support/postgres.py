"""A private PostgreSQL cluster for tests: ``initdb`` into a temporary folder, served on 127.0.0.1.

The server listens on a free TCP port of 127.0.0.1 only, with its unix socket in its own folder,
and trusts local connections (a throw-away cluster holds nothing worth a password). ``initdb``
refuses to run as root, so under root the binaries run as an unprivileged user (``postgres``,
which Debian's package creates, else ``nobody``) that owns the folder.

Usage::

    with PostgresCluster.start_new() as pg:
        url = pg.create_database("airflow")

The same cluster, kept in a folder between runs, is what ``make airflow AIRFLOW_DB=postgres``
uses (``python -m tests.support.postgres up|down --dir var/postgres``; see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
_UNPRIVILEGED_USERS = ("postgres", "nobody")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (``apt-get install postgresql``)."""


def find_bin_dir() -> Path:
    """The folder of the server binaries (``initdb``, ``pg_ctl``, ``createdb``).

    Debian keeps them off PATH in ``/usr/lib/postgresql/<major>/bin``; the newest major wins,
    then whatever ``initdb`` PATH finds.

    Raises:
        PostgresUnavailable: No ``initdb`` with a ``pg_ctl`` beside it.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
        "on PATH: apt-get install postgresql"
    )


def free_port() -> int:
    """A TCP port nobody listens on (right now) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> str | None:
    """The user to run the server binaries as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in _UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) exists")


@dataclass
class PostgresCluster:
    """A running private cluster; :meth:`stop` (or leaving the ``with`` block) removes it.

    Attributes:
        base: Temporary folder holding ``data/``, ``socket/`` and ``server.log``.
        port: TCP port on 127.0.0.1.
        bin_dir: Folder of the server binaries.
        user: OS user the server runs as (None: this process's user).
        keep: A persistent cluster (:meth:`open`): :meth:`stop` leaves its folder in place.
    """

    base: Path
    port: int
    bin_dir: Path
    user: str | None
    keep: bool = False

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @classmethod
    def start_new(cls, timeout: float = 60) -> PostgresCluster:
        """``initdb`` a fresh cluster in a new temporary folder and start it.

        The folder is made under the system's temporary folder (not pytest's, which is private
        to root) so that the server's user can reach it, and a short path keeps the unix
        socket's path under its 107-byte limit.

        Raises:
            PostgresUnavailable: The binaries are missing.
            RuntimeError: ``initdb`` or the server failed (its log is in the message).
        """
        bin_dir = find_bin_dir()
        user = _run_as()
        base = Path(tempfile.mkdtemp(prefix="hp-pg-"))
        cluster = cls(base=base, port=free_port(), bin_dir=bin_dir, user=user)
        try:
            cluster.socket_dir.mkdir()
            if user is not None:
                info = pwd.getpwnam(user)
                for path in (base, cluster.socket_dir):
                    os.chown(path, info.pw_uid, info.pw_gid)
            cluster._initdb()
            cluster._start(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def open(cls, base: Path, port: int, timeout: float = 60) -> PostgresCluster:
        """The cluster kept in ``base``: created on first use, started unless it is running.

        Raises:
            PostgresUnavailable: The binaries are missing.
            RuntimeError: ``initdb`` or the server failed (its log is in the message).
        """
        base = base.resolve()
        cluster = cls(base=base, port=port, bin_dir=find_bin_dir(), user=_run_as(), keep=True)
        if not (cluster.data_dir / "PG_VERSION").exists():
            cluster.socket_dir.mkdir(parents=True, exist_ok=True)
            if cluster.user is not None:
                info = pwd.getpwnam(cluster.user)
                for path in (base, cluster.socket_dir):
                    os.chown(path, info.pw_uid, info.pw_gid)
            cluster._initdb()
        pid = cluster._postmaster_pid()
        if pid is None or not _alive(pid):
            cluster._start(timeout)
        return cluster

    def ensure_database(self, name: str, driver: str = "psycopg") -> str:
        """Create ``name`` unless it exists; returns its SQLAlchemy URL."""
        try:
            return self.create_database(name, driver)
        except RuntimeError as error:
            if "already exists" not in str(error):
                raise
            return self.url(name, driver)

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return command if self.user is None else ["runuser", "-u", self.user, "--", *command]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            self._command(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,  # the server's user may not be allowed into our working folder
        )
        if done.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr)[-3000:]}{log[-3000:]}"
            )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throw-away cluster: skip the fsyncs (seconds on a busy disk)
        )

    def _start(self, timeout: float) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``database`` over TCP on 127.0.0.1 (``driver``: psycopg, psycopg2)."""
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, driver: str = "psycopg") -> str:
        """Create ``name`` (owned by the superuser); returns its SQLAlchemy URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name, driver)

    def _postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL if it lingers) and delete the folder."""
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60
                )
            if _alive(pid):
                # The postmaster's children exit when it dies; SIGKILL it only as a last resort.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main(argv: list[str] | None = None) -> int:
    """``up``: start (creating it first if needed) the cluster kept in ``--dir`` on ``--port``
    and make ``--database``; prints its SQLAlchemy URL. ``down``: stop it (its data stays).
    """
    parser = argparse.ArgumentParser(description="A local PostgreSQL cluster on 127.0.0.1.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, required=True, help="folder of the cluster")
    parser.add_argument("--port", type=int, default=5433, help="TCP port on 127.0.0.1")
    parser.add_argument("--database", default="airflow", help="database to create (up)")
    args = parser.parse_args(argv)
    if args.action == "down":
        cluster = PostgresCluster(args.dir.resolve(), args.port, find_bin_dir(), _run_as(), True)
        cluster.stop()
        return 0
    print(PostgresCluster.open(args.dir, args.port).ensure_database(args.database))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
