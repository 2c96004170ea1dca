"""Loop decisions, state and lease: pure functions and real storage (local and S3)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp

import pandas as pd
import pytest

from healthpredict.core import storage
from healthpredict.core.layout import monitoring_dir
from healthpredict.monitoring.lease import LoopLockedError, lease
from healthpredict.monitoring.state import (
    BatchWindow,
    LoopState,
    next_window,
    remaining_batches,
    write_batch,
)
from healthpredict.pipelines.monitoring_step import should_retrain


def test_next_window_walks_the_stream():
    assert next_window(0, 4500, 2000) == BatchWindow(0, 2000)
    assert next_window(4000, 4500, 2000) == BatchWindow(4000, 4500)
    assert next_window(4500, 4500, 2000) is None
    assert BatchWindow(4000, 4500).name == "batch_0004000.csv"
    assert remaining_batches(4500, 0, 2000) == 3 and remaining_batches(4500, 4500, 2000) == 0
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next_window(0, 10, 0)
    with pytest.raises(ValueError, match="outside the stream"):
        next_window(11, 10, 5)


def test_should_retrain_only_on_drift():
    assert should_retrain("DRIFT_DETECTED") and not should_retrain("NO_DRIFT")
    with pytest.raises(ValueError, match="unexpected drift_status"):
        should_retrain("maybe")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_bucket")


def test_state_round_trip_and_batches_overwrite(root):
    assert LoopState.load(root).next_batch_start_index == 0
    state = LoopState(next_batch_start_index=2000, history=[{"start": 0}])
    state.save(root)
    assert LoopState.load(root) == state
    frame = pd.DataFrame({"encounter_id": range(10)})
    uri = write_batch(frame, BatchWindow(0, 5), root)
    assert write_batch(frame, BatchWindow(0, 5), root) == uri  # re-run overwrites
    assert len(storage.read_csv(uri)) == 5
    assert len(storage.list_uris(storage.join(monitoring_dir(root), "batches"))) == 1


def test_second_runner_is_refused_and_lease_released(root):
    with lease(root) as held:
        with pytest.raises(LoopLockedError, match="another loop runner"):
            with lease(root):
                pass
        held.renew()
    with lease(root):  # released: can be taken again
        pass


def test_expired_lease_is_taken_over(root):
    uri = storage.join(monitoring_dir(root), "lease.json")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    storage.write_json(uri, {"holder": "dead-host:1:abc", "expires_at": past})
    with lease(root) as held:
        assert json.loads(storage.read_bytes(uri))["holder"] == held.holder


def _try_lease(root: str, queue) -> None:
    try:
        with lease(root):
            queue.put("got")
            import time

            time.sleep(1.5)
    except LoopLockedError as exc:
        queue.put(f"refused: {exc}")


def test_two_processes_at_once_one_proceeds(tmp_path):
    queue = mp.get_context("spawn").Queue()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_try_lease, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert results[0] == "got" and results[1].startswith("refused: another loop runner")
