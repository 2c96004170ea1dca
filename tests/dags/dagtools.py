"""Helpers of the DAG tests (imported by name: tests/dags is on sys.path for its modules)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_IDS = (
    "health_predict_training_hpo",
    "health_predict_monitoring_retraining",
    "health_predict_api_deployment",
)


def load_dags() -> dict:
    """Parse ``dags/`` with Airflow's DagBag (with the current settings); fails on errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags


def task_states(dag_run) -> dict[str, str]:
    """``task_id -> state`` of a finished ``dag.test()`` run."""
    return {ti.task_id: str(ti.state) if ti.state else None for ti in dag_run.get_task_instances()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A uvicorn server in a subprocess on 127.0.0.1; stopped by :meth:`stop`."""

    def __init__(self, app: str, *, cwd: Path, env: dict | None = None, ready_path: str = "/"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + ready_path, timeout=1)
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"uvicorn {app} did not start: {err[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    """An XCom value of a finished run, read from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, key=key, task_ids=task_id, dag_ids=dag_id)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def dag_run(dag_id: str, run_id: str):
    """``(state, conf)`` of a DAG run in the metadata DB, or None."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one_or_none()
        return None if found is None else (str(found.state), dict(found.conf or {}))
