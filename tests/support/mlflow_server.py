"""A real MLflow tracking server for tests, shaped like production's ``mlflow`` service.

As in ``docker-compose.yml``: ``mlflow server --workers=1 --serve-artifacts
--artifacts-destination=s3://<bucket>/mlartifacts`` with its backend store on PostgreSQL (see
:mod:`tests.support.postgres`), the store's URL passed in the environment
(``MLFLOW_BACKEND_STORE_URI``) rather than on the command line. The server proxies every artifact
upload and download, so only the server holds the S3 settings (``MLFLOW_S3_ENDPOINT_URL`` and the
AWS variables, here pointing at moto's server); clients talk to its HTTP URL alone.

It listens on a free port of 127.0.0.1, runs in its own process group (:meth:`stop` ends the
group: the CLI's uvicorn worker included) and writes its output to ``<base>/server.log``. Its
working folder is ``<base>``, so a store that fell back to local files would show there.

Usage::

    with MlflowServer.start(pg_url, "s3://bucket/mlartifacts", s3_endpoint_url=moto) as server:
        mlflow.set_tracking_uri(server.url)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.postgres import free_port
from tests.support.processes import signal_group

# Variables of this process that must not reach the server: another store's settings.
_FOREIGN_PREFIXES = ("MLFLOW_", "HP_", "AWS_")


class MlflowStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


@dataclass
class MlflowServer:
    """A running ``mlflow server``; :meth:`stop` (or leaving the ``with`` block) ends it.

    Attributes:
        base: Temporary working folder holding ``server.log`` (deleted by :meth:`stop`).
        url: Tracking URI of the server (``http://127.0.0.1:<port>``).
        artifacts_destination: Where the server writes artifacts (``s3://bucket/prefix``).
        proc: The ``mlflow server`` process (leader of its process group).
    """

    base: Path
    url: str
    artifacts_destination: str
    proc: subprocess.Popen

    @classmethod
    def start(
        cls,
        backend_store_uri: str,
        artifacts_destination: str,
        *,
        s3_endpoint_url: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> MlflowServer:
        """Start the server and wait until ``/health`` answers.

        Args:
            backend_store_uri: SQLAlchemy URL of the tracking and registry store
                (``postgresql+psycopg://...``); MLflow creates its tables.
            artifacts_destination: Root the server proxies artifacts to (``s3://bucket/prefix``).
            s3_endpoint_url: S3 endpoint of the server's artifact client (moto, MinIO); None: AWS.
            env: Extra environment of the server (AWS credentials, for example).
            timeout: Seconds allowed for the start (database migration included).

        Raises:
            MlflowStartError: The server exited or did not answer in time (its log inside).
        """
        base = Path(tempfile.mkdtemp(prefix="hp-mlflow-"))
        port = free_port()
        server_env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        server_env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri
        # MLflow 3's job execution (GenAI scorers, trace archival) starts six huey consumers
        # with 37 worker threads in all: tens of seconds of CPU at start on two cores, for jobs
        # the project never submits. ``env`` may switch it back on.
        server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if s3_endpoint_url:
            server_env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint_url
        server_env.update(env or {})
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",  # as production; 4 workers take ~3x longer to start here
            "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        ]  # fmt: skip
        with open(base / "server.log", "wb") as log:
            proc = subprocess.Popen(
                command,
                env=server_env,
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the worker too
            )
        server = cls(base, f"http://127.0.0.1:{port}", artifacts_destination, proc)
        try:
            server._wait_healthy(time.monotonic() + timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def log(self, tail: int = 5000) -> str:
        """The last ``tail`` characters of the server's output, for failure messages."""
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def _wait_healthy(self, deadline: float) -> None:
        last: object = None
        while True:
            if self.proc.poll() is not None:
                raise MlflowStartError(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                answer = requests.get(f"{self.url}/health", timeout=5)
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            except requests.RequestException as error:
                last = error
            if time.monotonic() > deadline:
                raise MlflowStartError(
                    f"mlflow server not healthy in time (last answer: {last}):\n{self.log()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout`` s; delete the folder.

        Raises:
            RuntimeError: A process of the group survived SIGKILL (named with its pid).
        """
        pgid = self.proc.pid
        signal_group(pgid, signal.SIGTERM)
        gone = _wait_group_gone(self.proc, timeout)
        if not gone:
            signal_group(pgid, signal.SIGKILL)
            gone = _wait_group_gone(self.proc, 10)
        shutil.rmtree(self.base, ignore_errors=True)
        if not gone:
            raise RuntimeError(f"mlflow server process group {pgid} survived SIGKILL")

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_group_gone(leader: subprocess.Popen, timeout: float) -> bool:
    """Reap ``leader`` and wait until no process of its group is left; False on timeout.

    The uvicorn worker is the leader's child, not ours: only the group tells when it is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        leader.poll()  # reaps the leader once it exited (a zombie still counts in the group)
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
