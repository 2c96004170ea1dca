"""Services going away: the S3 endpoint stopped mid-run, the MLflow server not there at all.

Both fail after bounded retries with a message naming the endpoint, move nothing (no alias, no
cursor), and the same command completes once the service is back on the same address.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
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
from healthpredict.core.portable import resolve
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
    """An S3 endpoint on a fixed port that goes down and comes back with what it held.

    moto keeps objects in memory, so it runs for the whole test; the endpoint clients use is a
    TCP relay in front of it. ``stop`` closes the port and cuts every open connection (clients
    get "connection refused", as when a real endpoint goes down); ``start`` opens the same port
    again, and the objects written before the outage are all there.

    Why not stop and restart moto itself: its memory would have to come back from moto's
    recorder (``MOTO_ENABLE_RECORDING``, replayed by ``POST /moto-api/recorder/replay-recording``),
    and that replay answered 500 once under load. The recorder (moto 5.2.5) appends each request
    as two writes, the JSON and then the newline, the JSON going out at once when over 8 KiB; the
    replay parses line by line and fails on the first line that is not one JSON object. So a line
    breaks when another request's entry lands between those two writes (concurrent requests over
    8 KiB: 4 parallel 4 MB PUTs gave 22 broken lines out of 40 PUTs and a 500 on replay, under
    load), when the server is terminated between them (the restarted server's first request, the
    health check, is then appended to the unfinished line) or in the middle of a large write.
    Which one hit the failing run is not known; all depend on thread timing. (A replayed multipart
    upload would also get a new upload id, and its parts would go nowhere.)
    """

    def __init__(self, port: int, log: Path):
        self.port = port
        self.log = log
        self._moto: subprocess.Popen | None = None
        self._moto_address: tuple[str, int] = ("127.0.0.1", 0)
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Open the endpoint (moto itself starts the first time only)."""
        if self._moto is None:
            self._moto_address = ("127.0.0.1", free_port())
            with self.log.open("a") as log:
                self._moto = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                     "-p", str(self._moto_address[1])],
                    stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
        # Same port again: create_server sets SO_REUSEADDR, so closed connections don't block it.
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)  # the acceptor checks for stop() this often
        self._acceptor = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._acceptor.start()
        _wait_http(self.url, self._moto, timeout=30, what=f"moto behind {self.url}")

    def stop(self) -> None:
        """The outage: the port closes and every open connection is cut, moto keeps its data."""
        if self._listener is None:
            return
        listener, self._listener = self._listener, None
        self._acceptor.join(timeout=5)  # it sees the listener is no longer current and returns
        listener.close()
        with self._lock:
            cut, self._open = list(self._open), set()
        for sock in cut:
            _close(sock)

    def close(self) -> None:
        """Stop the endpoint and moto."""
        self.stop()
        if self._moto is not None and self._moto.poll() is None:
            self._moto.terminate()
            self._moto.wait(timeout=15)

    def _accept(self, listener: socket.socket) -> None:
        while listener is self._listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._moto_address, timeout=10)
            except OSError:
                _close(client)  # moto itself is gone: the client sees the connection closed
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if listener is not self._listener:  # stopped meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy one direction; when either side ends, end the connection on both."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # cut by stop(), or the other direction closed it
        with self._lock:
            self._open.difference_update((src, dst))
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    """Shut a socket down (waking a thread blocked on it, sending what is queued) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected
    sock.close()


@pytest.fixture
def s3(env, monkeypatch):
    """The whole storage (data, cursor, batches, drift cache, MLflow artifacts) on our own S3.

    The first batch of the stream drifts (more prior inpatient visits), so the loop retrains.
    """
    import boto3

    server = MotoS3(free_port(), env.tmp / "moto.log")
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
        server.close()
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
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # under load it took over 30 s to stop: not ours
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == 2 * BATCH_ROWS and len(state.history) == 1
    (run,) = mlflow_runs()  # the server's store, read directly
    assert run.info.status == "FINISHED"
    assert resolve(run.data.params["new_data_path"]) == state.history[0]["batch_uri"]
