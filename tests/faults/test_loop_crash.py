"""A loop runner killed mid-batch, two runners at once, a damaged state: the real CLI.

``healthpredict loop`` runs as a child process in its own process group; the tests kill that
group with SIGKILL while a monitoring run is half-way, then check that the batch is processed
again, exactly once, by the next runner.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fault_helpers import (
    BATCH_ROWS,
    MONITOR,
    cli_command,
    cli_env,
    mlflow_runs,
    run_cli,
    run_dirs,
    run_records,
    state_bytes,
    wait_for,
)

from healthpredict.core import storage
from healthpredict.core.portable import resolve
from healthpredict.mlops import tracking
from healthpredict.monitoring import lease as loop_lease
from healthpredict.monitoring import state as loop_state
from healthpredict.runs.gallery import build_gallery

pytestmark = pytest.mark.faults
LEASE_SECONDS = 9  # renewed every 3 s while the runner lives


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _kernels_of(pid: int) -> list[int]:
    """Pids of the Jupyter kernels started by process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[1] != pid:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ipykernel" in cmdline:
            found.append(int(entry.name))
    return found


def _loop(env, log: Path, max_batches: int) -> subprocess.Popen:
    """Start ``healthpredict loop`` in its own process group, output into ``log``."""
    return subprocess.Popen(
        cli_command("loop", "--batch-size", str(BATCH_ROWS), "--max-batches", str(max_batches)),
        cwd=env.tmp,
        env=cli_env(HP_LOOP_LEASE_SECONDS=str(LEASE_SECONDS)),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class _GalleryRows(HTMLParser):
    """(run id, css class, notebook) of each row of the gallery table."""

    def __init__(self):
        super().__init__()
        self.rows: list[list] = []
        self._bold = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-run-id" in attrs:
            self.rows.append([attrs["data-run-id"], attrs.get("class"), None])
        self._bold = tag == "b"

    def handle_data(self, data):
        if self._bold and self.rows and self.rows[-1][2] is None:
            self.rows[-1][2] = data
        self._bold = False


def test_killed_runner_leaves_the_batch_to_the_next_one(env):
    log = env.tmp / "killed.log"
    runner = _loop(env, log, max_batches=2)
    kernels: list[int] = []
    try:
        # In the middle of a monitoring run: its MLflow run has started and not finished.
        wait_for(
            lambda: [r for r in mlflow_runs() if r.info.status == "RUNNING"],
            timeout=240,
            what=f"a RUNNING monitoring run (runner output: {log})",
        )
        kernels = _kernels_of(runner.pid)
        assert kernels, "the monitoring run's kernel was not found"
        os.killpg(runner.pid, signal.SIGKILL)
        assert runner.wait(timeout=30) == -signal.SIGKILL
        # The dead runner's lease blocks the next one until it expires, and says until when.
        lease = json.loads((env.monitoring / "lease.json").read_text())
        with pytest.raises(loop_lease.LoopLockedError) as refused:
            with loop_lease.lease():
                pass
        # The kernel lives in its own session; it notices its parent died and exits by itself.
        wait_for(lambda: not any(map(_alive, kernels)), timeout=30, what="the kernel to exit")
    finally:
        for pid in [runner.pid, *kernels]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # Half-way: the batch file is written, the cursor never moved, the run's record says running
    # (the dead runner's pid) beside its partial notebook.
    first = env.monitoring / "batches" / "batch_0000000.csv"
    assert len(storage.read_csv(first)) == BATCH_ROWS
    assert state_bytes(env.monitoring) is None
    (killed_dir,) = run_dirs(env.rendered, MONITOR)
    killed = json.loads((killed_dir / "run.json").read_text())
    assert killed["status"] == "running" and killed["owner"]["pid"] == runner.pid
    assert (killed_dir / f"{MONITOR}.ipynb").exists()
    (stale,) = mlflow_runs()
    assert stale.info.status == "RUNNING"
    assert f":{runner.pid}:" in lease["holder"]
    assert stale.data.tags[tracking.LOOP_HOLDER_TAG] == lease["holder"]
    message = str(refused.value)
    assert lease["holder"] in message and lease["expires_at"] in message
    assert "expires by itself" in message and "HP_LOOP_LEASE_SECONDS" in message
    expires = dt.datetime.fromisoformat(lease["expires_at"])
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)

    done = run_cli(
        "loop",
        "--batch-size",
        str(BATCH_ROWS),
        "--max-batches",
        "2",
        cwd=env.tmp,
        HP_LOOP_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == 2 * BATCH_ROWS
    assert [h["start"] for h in state.history] == [0, BATCH_ROWS]
    batches = [str(env.monitoring / "batches" / f"batch_{s:07d}.csv") for s in (0, BATCH_ROWS)]
    assert [h["batch_uri"] for h in state.history] == batches
    assert not (env.monitoring / "lease.json").exists()
    # Labels one batch late: batch 0's arrived once, at the second batch; batch 1's are pending.
    assert [b["start"] for b in state.labelled_batches] == [0]
    assert [p["start"] for p in state.pending_labels] == [BATCH_ROWS]
    assert [h["labels"]["labelled_rows"] for h in state.history] == [0, BATCH_ROWS]
    assert "readmitted" not in storage.read_csv(first).columns

    # MLflow: one FINISHED monitoring run per batch; the dead runner's run was ended KILLED.
    runs = mlflow_runs()
    # (the params name the batches portably: <storage>/...)
    finished = Counter(
        resolve(r.data.params["new_data_path"]) for r in runs if r.info.status == "FINISHED"
    )
    assert finished == Counter(batches)
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[stale.info.run_id].info.status == "KILLED"
    assert "died" in by_id[stale.info.run_id].data.tags["healthpredict.killed"]
    assert [r for r in runs if r.info.status == "RUNNING"] == []

    # Rendered: one succeeded run.json per batch; the killed run's still says running.
    records = run_records(env.rendered, MONITOR)
    succeeded = [r for r in records if r["status"] == "succeeded"]
    assert Counter(r["given_parameters"]["new_data_path"] for r in succeeded) == Counter(batches)
    assert [r["run_id"] for r in records if r["status"] == "running"] == [killed["run_id"]]
    assert len(records) == len(run_dirs(env.rendered, MONITOR)) == 3

    # Gallery: the two successful monitoring runs as ok, the killed one once, as killed.
    parser = _GalleryRows()
    parser.feed(Path(build_gallery(str(env.rendered))).read_text())
    monitor_rows = [(run_id, cls) for run_id, cls, nb in parser.rows if nb == MONITOR]
    expected = [(r["run_id"], "run-ok") for r in succeeded] + [(killed["run_id"], "run-killed")]
    assert sorted(monitor_rows) == sorted(expected)


def test_two_runners_at_once_one_proceeds(env):
    loop_state.LoopState(
        next_batch_start_index=BATCH_ROWS
    ).save()  # a batch without drift: no retrain
    logs = [env.tmp / f"runner{i}.log" for i in range(2)]
    runners = [_loop(env, log, max_batches=1) for log in logs]
    try:
        codes = [r.wait(timeout=300) for r in runners]
    finally:
        for r in runners:
            if r.poll() is None:
                os.killpg(r.pid, signal.SIGKILL)
    outputs = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 3], outputs
    refused = outputs[codes.index(3)]
    assert "LoopLockedError: another loop runner (" in refused
    assert "holds the lease on" in refused and "expires by itself" in refused
    assert "Traceback" not in refused
    # The winner did the batch, once; the loser touched nothing.
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == 2 * BATCH_ROWS and len(state.history) == 1
    assert [r.info.status for r in mlflow_runs()] == ["FINISHED"]
    assert len(run_records(env.rendered, MONITOR)) == 1
    assert not (env.monitoring / "lease.json").exists()


def test_live_runner_keeps_its_lease_and_notices_losing_it(env):
    with loop_lease.lease(seconds=3) as held:
        time.sleep(4)  # past the lease's lifetime: the background renewal kept it
        with pytest.raises(loop_lease.LoopLockedError, match="holds the lease"):
            with loop_lease.lease(seconds=3):
                pass
        # Somebody took the lease over (this runner stalled too long): it must notice.
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
        storage.write_json(held.uri, {"holder": "elsewhere:1:abc", "expires_at": later})
        wait_for(lambda: held.lost is not None, timeout=5, what="the renewal to notice")
        with pytest.raises(
            loop_lease.LoopLockedError, match="lost the lease .* to elsewhere:1:abc"
        ):
            held.renew()
    assert storage.read_json(held.uri)["holder"] == "elsewhere:1:abc"  # not ours to delete


def test_unreadable_state_says_how_to_recover(env):
    env.monitoring.mkdir(parents=True)
    (env.monitoring / "state.json").write_text('{"next_batch_start_index": 5')  # cut short
    done = run_cli("loop", "--batch-size", str(BATCH_ROWS), cwd=env.tmp, timeout=120)
    assert done.returncode == 1
    assert (
        "LoopStateError" in done.stderr and "state.json is not a readable loop state" in done.stderr
    )
    assert "delete it to start the stream again from its first batch" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (env.monitoring / "batches").exists() and not env.rendered.exists()
