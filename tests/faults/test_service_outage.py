"""Services going away: the S3 endpoint stopped mid-run, the MLflow server not there at all.

Both fail after bounded retries with a message naming the endpoint, move nothing (no alias, no
cursor), and the same command completes once the service is back on the same address.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from fault_helpers import (
    BATCH_ROWS,
    MONITOR,
    RETRAIN,
    aliases,
    free_port,
    mlflow_runs,
    run_cli,
    run_dirs,
    run_records,
    wait_for,
)

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import LoopParams
from healthpredict.monitoring import state as loop_state
from healthpredict.pipelines import local_loop
from healthpredict.runs import NotebookRunError
from tests.support import drift_scenarios

pytestmark = pytest.mark.faults


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except OSError:
            return False

    wait_for(up, timeout=timeout, what=what)


class MotoS3:
    """moto's S3 server in a child process, stopped and started again on the same port.

    moto keeps objects in memory; its recorder logs every request to a file and a restarted
    server replays that file, so what was written before the outage is there again, as with a
    real endpoint coming back.
    """

    def __init__(self, port: int, recording: Path):
        self.port = port
        self.recording = recording
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        replay = self.recording.exists() and self.recording.stat().st_size > 0
        env = {
            **os.environ,
            "MOTO_ENABLE_RECORDING": "true",
            "MOTO_RECORDER_FILEPATH": str(self.recording),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(self.url, self.proc, timeout=30, what=f"moto on {self.url}")
        if replay:
            req = urllib.request.Request(
                f"{self.url}/moto-api/recorder/replay-recording", method="POST"
            )
            urllib.request.urlopen(req, timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def s3(env, monkeypatch):
    """The whole storage (data, cursor, batches, drift cache, MLflow artifacts) on our own S3.

    The first batch of the stream drifts (more prior inpatient visits), so the loop retrains.
    """
    import boto3

    server = MotoS3(free_port(), env.tmp / "moto-recording.jsonl")
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HP_S3_ENDPOINT_URL": server.url,
        "HP_STORAGE": "s3://hp-faults/hp",
        "HP_LOOP_LEASE_SECONDS": "6",
    }.items():
        monkeypatch.setenv(name, value)
    # Unset, and unset again after the test: tracking.setup_mlflow derives it from the above.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    get_settings.cache_clear()
    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="hp-faults")
    for path in sorted(env.data_dir.iterdir()):
        storage.write_bytes(storage.join(layout.processed_data(), path.name), path.read_bytes())
    drifted = drift_scenarios.apply("more_prior_inpatient", env.future.iloc[:BATCH_ROWS], 1.5)
    future = pd.concat([drifted, env.future.iloc[BATCH_ROWS:]], ignore_index=True)
    storage.write_csv(storage.join(layout.processed_data(), "future_data.csv"), future)
    try:
        yield server
    finally:
        server.stop()
        get_settings.cache_clear()


def _message(exc: BaseException) -> str:
    return "\n".join([str(exc), *getattr(exc, "__notes__", [])])


# The first batch retrains: its labels come with it and any new labelled row asks for one.
LABELLED_AT_ONCE = LoopParams(batch_size=BATCH_ROWS, max_batches=1, label_delay_batches=0)
ASK_TO_RETRAIN = local_loop.LoopOptions(
    monitor_params={"growth_trigger": 0.0}, retrain_params={"n_trials": 1}
)


def test_s3_outage_mid_retrain_moves_nothing_then_the_run_completes(env, s3):
    monitoring = layout.monitoring_dir()
    state_uri = storage.join(monitoring, "state.json")
    loop_state.LoopState().save()
    state_before = storage.read_bytes(state_uri)
    aliases_before = aliases()
    stopped_at: list[float] = []

    def stop_when_retraining() -> None:
        deadline = time.monotonic() + 300
        while not run_dirs(env.rendered, RETRAIN) and time.monotonic() < deadline:
            time.sleep(0.1)
        s3.stop()
        stopped_at.append(time.monotonic())

    stopper = threading.Thread(target=stop_when_retraining, daemon=True)
    stopper.start()
    with pytest.raises(NotebookRunError) as failed:
        local_loop.run_loop(LABELLED_AT_ONCE, ASK_TO_RETRAIN)
    stopper.join(timeout=10)
    assert stopped_at, "the retraining never started"
    waited = time.monotonic() - stopped_at[0]
    message = _message(failed.value)
    print(f"failed {waited:.1f} s after S3 stopped:\n{message}")
    # Bounded retries, then a failure that names the endpoint and the batch.
    assert "notebook 04_retrain failed" in message and "StorageError" in message
    assert f'Could not connect to the endpoint URL: "{s3.url}/' in message
    assert f"the S3 endpoint ({s3.url}) did not answer 5 attempts with backoff" in message
    assert f"batch rows 0-{BATCH_ROWS}" in message and "the loop state is unchanged" in message
    assert waited < 150, f"the outage took {waited:.0f} s to fail"
    # Half a retraining moved no alias and registered no version.
    assert aliases() == aliases_before
    (monitored,) = run_records(env.rendered, MONITOR)
    (retrained,) = run_records(env.rendered, RETRAIN)
    assert monitored["status"] == "succeeded" and retrained["status"] == "failed"
    assert monitored["scraps"]["retrain"] is True

    s3.start()  # the same port, with what it held before the outage
    assert storage.read_bytes(state_uri) == state_before
    batch_uri = storage.join(monitoring, "batches", "batch_0000000.csv")
    assert len(storage.read_csv(batch_uri)) == BATCH_ROWS
    lease_uri = storage.join(monitoring, "lease.json")
    if storage.exists(lease_uri):  # not released while S3 was down: it expires by itself
        expires = dt.datetime.fromisoformat(storage.read_json(lease_uri)["expires_at"])
        time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)

    (outcome,) = local_loop.run_loop(LABELLED_AT_ONCE, ASK_TO_RETRAIN)
    assert (
        outcome.window == loop_state.BatchWindow(0, BATCH_ROWS) and outcome.batch_uri == batch_uri
    )
    assert outcome.monitor_run_dir == monitored["run_dir"]  # the successful monitoring, re-used
    assert outcome.retrain is not None
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == BATCH_ROWS and len(state.history) == 1
    finished = [r for r in mlflow_runs() if r.info.status == "FINISHED"]
    assert [r.data.params["new_data_path"] for r in finished] == [batch_uri]
    # Its reports went to MLflow's artifacts on the same S3 endpoint, nowhere else.
    assert finished[0].info.artifact_uri.startswith("s3://hp-faults/hp/mlartifacts/")
    reports = storage.list_uris(f"{finished[0].info.artifact_uri}/drift_reports")
    assert any(u.endswith("data_drift.html") for u in reports)
    after = aliases()
    expected = outcome.retrain["challenger_version"] if outcome.retrain["promoted"] else None
    assert after["champion"] == (expected or aliases_before["champion"])
    assert int(after["#"]) == int(aliases_before["#"]) + 1  # one challenger, from the good run
    assert [r["status"] for r in run_records(env.rendered, RETRAIN)].count("succeeded") == 1


def test_mlflow_unreachable_fails_fast_then_the_run_completes(env):
    # From the second batch on (it does not drift: no retraining, to keep the test short).
    loop_state.LoopState(next_batch_start_index=BATCH_ROWS).save()
    state_before = (env.monitoring / "state.json").read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("loop", "--batch-size", str(BATCH_ROWS), "--max-batches", "1")
    started = time.monotonic()
    done = run_cli(*args, cwd=env.tmp, timeout=180, HP_MLFLOW_TRACKING_URI=url)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-3000:]
    assert "TrackingUnavailableError" in done.stderr and url in done.stderr
    assert "Nothing was done" in done.stderr and "Traceback" not in done.stderr
    print(f"an unreachable MLflow failed the loop in {took:.1f} s")
    assert took < 90, f"an unreachable MLflow took {took:.0f} s to fail"
    # Checked before anything: no batch, no kernel, no lease, the state as it was.
    assert (env.monitoring / "state.json").read_bytes() == state_before
    assert sorted(p.name for p in env.monitoring.iterdir()) == ["state.json"]
    assert not env.rendered.exists()

    log = (env.tmp / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{env.tmp / 'mlflow.db'}"],
        cwd=env.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_http(f"{url}/health", server, timeout=180, what=f"the MLflow server on {url}")
        done = run_cli(*args, cwd=env.tmp, timeout=300, HP_MLFLOW_TRACKING_URI=url)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == 2 * BATCH_ROWS and len(state.history) == 1
    (run,) = mlflow_runs()  # the server's store, read directly
    assert run.info.status == "FINISHED"
    assert run.data.params["new_data_path"] == state.history[0]["batch_uri"]
