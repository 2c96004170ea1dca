"""The monitoring DAG never runs twice at once, under a real Airflow scheduler.

Two runs of ``health_predict_monitoring_retraining`` are triggered at the same moment through
the REST API. ``max_active_runs=1`` keeps the second queued until the first has ended, so each
processes its own batch: the loop state shows batches 0 and the batch size once each. Then the
lease: while this test holds the loop's lease (as a running ``healthpredict loop`` would), a
triggered run fails in ``get_iteration_state`` with ``LoopLockedError`` and changes nothing.

The runs monitor without retraining (labels are due only far later, so there is nothing to
learn from), which keeps them short.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.support.dag_paths import NO_RETRAINING_PATH

# slow (a real Airflow), and a fault: two runs at once, a run against a held lease
pytestmark = [pytest.mark.slow, pytest.mark.faults]

DAG_ID = "health_predict_monitoring_retraining"


def _conf(world) -> dict:
    # No labels arrive within these runs (due 10 batches later): the monitor cannot ask for a
    # retraining that could run, so no training DAG is triggered.
    return {"batch_size": world.batch_rows, "label_delay_batches": 10, "wait_for_retraining": False}


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _state(world) -> dict:
    return json.loads(world.state_file.read_text())


@pytest.fixture(scope="module")
def two_runs(airflow, airflow_world):
    """Both runs triggered back to back (no wait between), then awaited."""
    airflow.wait_for_dags(DAG_ID)
    run_ids = ["concurrent_a", "concurrent_b"]
    triggered = [airflow.trigger(DAG_ID, run_id, _conf(airflow_world)) for run_id in run_ids]
    assert [t["state"] for t in triggered] == ["queued", "queued"]
    runs = airflow.wait_for_runs(DAG_ID, run_ids, timeout=600)
    return sorted(runs.values(), key=lambda r: _time(r["start_date"]))


def test_two_triggered_runs_never_overlap_and_each_takes_its_own_batch(
    airflow, airflow_world, two_runs
):
    first, second = two_runs
    size = airflow_world.batch_rows
    for run in (first, second):
        states = {
            t: ti["state"] for t, ti in airflow.task_instances(DAG_ID, run["dag_run_id"]).items()
        }
        assert (run["state"], states) == ("success", NO_RETRAINING_PATH), (
            f"{run['dag_run_id']}: {run['state']}, tasks {states}"
        )
    # max_active_runs=1: the second stayed queued while the first ran.
    assert _time(second["queued_at"]) < _time(first["end_date"])
    assert _time(second["start_date"]) >= _time(first["end_date"])

    state = _state(airflow_world)
    assert state["next_batch_start_index"] == 2 * size
    assert [(h["start"], h["end"], h["dag_run_id"]) for h in state["history"]] == [
        (0, size, first["dag_run_id"]),
        (size, 2 * size, second["dag_run_id"]),
    ]
    assert all(h["retrain"] is None for h in state["history"])
    assert not (airflow_world.storage / "monitoring" / "lease.json").exists()  # released


def test_a_run_while_another_runner_holds_the_lease_fails_and_changes_nothing(
    airflow, airflow_world, two_runs
):
    from healthpredict.monitoring.lease import lease

    before = airflow_world.state_file.read_bytes()
    with lease() as held:
        airflow.trigger(DAG_ID, "while_leased", _conf(airflow_world))
        (run,) = airflow.wait_for_runs(DAG_ID, ["while_leased"], timeout=300).values()
    assert run["state"] == "failed"
    tasks = airflow.task_instances(DAG_ID, "while_leased")
    assert tasks["get_iteration_state"]["state"] == "failed"
    assert tasks["simulate_data_batch"]["state"] == "upstream_failed"
    log = airflow.task_log(DAG_ID, "while_leased", "get_iteration_state")
    assert "LoopLockedError" in log and held.holder in log, log[-3000:]
    assert airflow_world.state_file.read_bytes() == before
