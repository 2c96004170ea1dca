"""A real Airflow for tests: scheduler, DAG processor and API server on 127.0.0.1.

Airflow 3.3 with the LocalExecutor and its metadata DB on PostgreSQL (see
:mod:`tests.support.postgres`), ``AIRFLOW_HOME`` in a temporary folder, the project's ``dags/``
and no examples. Every process runs in its own process group, so :meth:`AirflowServer.stop`
ends each whole group (stopping only a parent leaves its children running), then any process
still carrying this instance's ``AIRFLOW_HOME`` in its environment (task runners, notebook
kernels), by pid.

Nothing binds beyond 127.0.0.1: the API server listens there, and the scheduler's log server
(which binds every interface) is not started; task logs are read from ``AIRFLOW_HOME/logs`` by
the API server.

The REST API uses the SimpleAuthManager with ``simple_auth_manager_all_admins``: a token comes
from ``GET /auth/token`` without credentials.

Usage::

    with AirflowServer.start(db_url, dags_folder, env={"HP_STORAGE": ...}) as airflow:
        airflow.wait_for_dags("my_dag")
        airflow.trigger("my_dag", "run_1", {"batch_size": 250})
        runs = airflow.wait_for_runs("my_dag", ["run_1"])
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support.postgres import free_port
from tests.support.processes import signal_group

FINISHED = ("success", "failed")

PRELOAD_ENV = "HP_AIRFLOW_PRELOAD"
_PRELOAD_SETTINGS = f'''"""Written by tests/support/airflow_server.py: imports the modules named in {PRELOAD_ENV}.

Airflow imports ``airflow_local_settings`` from ``$AIRFLOW_HOME/config`` when it starts. The
LocalExecutor forks its task processes from the scheduler (and the DAG processor forks its
parsers), so what is imported here is not imported again for every task.
"""

import importlib
import os

__all__ = []  # nothing here overrides Airflow's settings

for _module in filter(None, os.environ.get("{PRELOAD_ENV}", "").split(",")):
    importlib.import_module(_module)
'''


def write_preload(home: Path) -> None:
    """Write ``$AIRFLOW_HOME/config/airflow_local_settings.py`` (see ``_PRELOAD_SETTINGS``)."""
    (home / "config").mkdir(exist_ok=True)
    (home / "config" / "airflow_local_settings.py").write_text(_PRELOAD_SETTINGS)


class AirflowStartError(RuntimeError):
    """Airflow did not come up; the message carries the tail of each process's log."""


def airflow_env(
    home: Path, db_url: str, dags_folder: Path, port: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every Airflow process of one instance.

    The sync and async database URLs both use ``db_url``'s driver: Airflow would otherwise
    derive ``postgresql+asyncpg`` for its async engine, a second driver to install. The JWT
    secret is shared, so tokens the API server signs are accepted by the task runners the
    scheduler starts, and back.
    """
    url = f"http://127.0.0.1:{port}"
    # Nothing of another Airflow's configuration (tests/dags sets some in this process).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env = {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        # Triggered runs start without a manual unpause (every DAG here has schedule=None).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",  # two cores: a few task processes at once at most
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        # The DAG files do not change during a test: parse each once, not every 30 s (a parse
        # imports the project, seconds of CPU on two shared cores).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        # A queued run starts within a second or two of the previous one ending.
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra or {})
    return env


@dataclass
class AirflowServer:
    """A running Airflow instance; :meth:`stop` (or leaving the ``with`` block) ends it.

    Attributes:
        home: Its ``AIRFLOW_HOME`` (temporary; deleted by :meth:`stop` unless ``keep_home``).
        url: Base URL of the API server (``http://127.0.0.1:<port>``).
        env: The environment its processes run with.
        procs: The started processes by name.
    """

    home: Path
    url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    keep_home: bool = False
    _token: str | None = None

    @classmethod
    def start(
        cls,
        db_url: str,
        dags_folder: Path,
        *,
        env: Mapping[str, str] | None = None,
        triggerer: bool = False,
        preload: tuple[str, ...] = (),
        timeout: float = 240,
        keep_home: bool = False,
    ) -> AirflowServer:
        """Migrate the metadata DB and start the scheduler, DAG processor and API server.

        Returns once the API server answers and reports the scheduler and DAG processor
        healthy. Waiting for the DAGs to be parsed is :meth:`wait_for_dags`.

        Args:
            db_url: SQLAlchemy URL of an empty PostgreSQL database (``postgresql+psycopg://``).
            dags_folder: The DAG files.
            env: Extra environment of every process (the tasks' settings, for example).
            triggerer: Also start the triggerer (for deferrable tasks), without its log server.
            preload: Modules the scheduler and DAG processor import at start (see
                :func:`write_preload`): the task and parsing processes they fork find them
                imported instead of importing them again, seconds each.
            timeout: Seconds allowed for the whole start.
            keep_home: Leave ``AIRFLOW_HOME`` (logs) in place after :meth:`stop`.

        Raises:
            AirflowStartError: A step failed or Airflow was not healthy in time.
        """
        home = Path(tempfile.mkdtemp(prefix="hp-airflow-"))
        port = free_port()
        server = cls(
            home=home,
            url=f"http://127.0.0.1:{port}",
            env=airflow_env(home, db_url, Path(dags_folder), port, env),
            keep_home=keep_home,
        )
        (home / "process-logs").mkdir()
        write_preload(home)
        preloading = {PRELOAD_ENV: ",".join(preload)}
        deadline = time.monotonic() + timeout
        try:
            migrate = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=server.env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if migrate.returncode != 0:
                raise AirflowStartError(
                    f"airflow db migrate failed ({migrate.returncode}): "
                    f"{(migrate.stdout + migrate.stderr)[-4000:]}"
                )
            server._spawn("scheduler", "--skip-serve-logs", env=preloading)
            server._spawn("dag-processor", env=preloading)
            server._spawn("api-server", "--host", "127.0.0.1", "--port", str(port))
            if triggerer:
                server._spawn("triggerer", "--skip-serve-logs")
            server._wait_healthy(deadline)
        except BaseException:
            server.stop()
            raise
        return server

    def _spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        log = open(self.home / "process-logs" / f"{name}.log", "wb")  # noqa: SIM115 (closed below)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", name, *args],
            env={**self.env, **(env or {})},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it with its children
        )
        log.close()  # the child holds its own copy

    def process_logs(self, tail: int = 3000) -> str:
        """The last ``tail`` characters of each process's output, for failure messages."""
        parts = []
        for path in sorted((self.home / "process-logs").glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.stem} ---\n{text[-tail:]}")
        return "\n".join(parts)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowStartError(
                    f"airflow {name} exited with {proc.returncode}\n{self.process_logs()}"
                )

    def _wait_healthy(self, deadline: float) -> None:
        last = None
        while True:
            self._check_alive()
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all(
                    (health.get(part) or {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "dag_processor")
                ):
                    return
            except (requests.RequestException, ValueError) as error:
                last = error
            if time.monotonic() > deadline:
                raise AirflowStartError(
                    f"Airflow not healthy in time (last answer: {last})\n{self.process_logs()}"
                )
            time.sleep(1)

    # The REST API -----------------------------------------------------------------------------

    def token(self) -> str:
        """A JWT for the REST API (SimpleAuthManager, all admins: no credentials needed)."""
        if self._token is None:
            answer = requests.get(f"{self.url}/auth/token", timeout=30)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api/v2<path>``; returns the decoded JSON.

        Raises:
            requests.HTTPError: A non-2xx answer (its body is in the message).
        """
        answer = requests.request(
            method,
            f"{self.url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=60,
            **kwargs,
        )
        if not answer.ok:
            raise requests.HTTPError(
                f"{method} {path}: {answer.status_code} {answer.text[:2000]}", response=answer
            )
        return answer.json() if answer.content else None

    def wait_for_dags(self, *dag_ids: str, timeout: float = 180) -> None:
        """Wait until the DAG processor has stored ``dag_ids``; fails early on import errors.

        Raises:
            AssertionError: An import error was recorded, or a DAG did not appear in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            errors = self.api("GET", "/importErrors")["import_errors"]
            assert not errors, f"DAG import errors: {errors}"
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 100})["dags"]}
            if set(dag_ids) <= found:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"DAGs {sorted(set(dag_ids) - found)} not parsed in {timeout} s (found "
                    f"{sorted(found)})\n{self.process_logs()}"
                )
            time.sleep(1)

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None) -> dict:
        """Create a manual run of ``dag_id`` (queued; the scheduler starts it)."""
        return self.api(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": dict(conf or {})},
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        """The run as the REST API reports it (``state``, ``start_date``, ``end_date``...)."""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """``task_id -> task instance`` of one run."""
        found = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The log of one try of a task, as text (the REST API's structured lines joined)."""
        content = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
        )["content"]
        lines = []
        for line in content:
            if isinstance(line, dict):
                lines.append(" ".join(str(v) for k, v in line.items() if k != "timestamp"))
            else:
                lines.append(str(line))
        return "\n".join(lines)

    def dag_runs(self, dag_id: str) -> dict[str, dict]:
        """``run_id -> dag run`` of every run of ``dag_id`` (oldest first)."""
        found = self.api(
            "GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"}
        )
        return {run["dag_run_id"]: run for run in found["dag_runs"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """An XCom value of a task, as the task pushed it.

        Raises:
            requests.HTTPError: The task pushed no such XCom (404).
        """
        # Without ``deserialize`` the API returns the stored (JSON) value itself, not a string.
        return self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        )["value"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause (its triggered runs stay queued) or unpause a DAG."""
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def wait_for_runs(
        self, dag_id: str, run_ids: list[str], timeout: float = 600, poll: float = 1.0
    ) -> dict[str, dict]:
        """Poll until every run has finished; returns ``run_id -> dag run``.

        Raises:
            AssertionError: A run did not finish in time (with the runs' states and the logs).
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            runs = {run_id: self.dag_run(dag_id, run_id) for run_id in run_ids}
            if all(r["state"] in FINISHED for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                states = {run_id: r["state"] for run_id, r in runs.items()}
                raise AssertionError(
                    f"runs not finished in {timeout} s: {states}\n{self.process_logs()}"
                )
            time.sleep(poll)

    # Stopping ---------------------------------------------------------------------------------

    def stop(self, timeout: float = 30) -> None:
        """End every process this instance started, then delete ``AIRFLOW_HOME``.

        Each process group gets SIGTERM, then SIGKILL after ``timeout`` seconds; then any process
        left whose environment names this ``AIRFLOW_HOME`` (a task runner or kernel that left
        the group) is killed by pid.
        """
        for proc in reversed(list(self.procs.values())):
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            signal_group(proc.pid, signal.SIGKILL)  # the group's stragglers, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for pid in processes_with_env("AIRFLOW_HOME", str(self.home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> AirflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes (other than this one) whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in variables:
            found.append(int(entry.name))
    return found
