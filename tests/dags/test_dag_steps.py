"""What the DAG tasks do, without Airflow: notebook runs, batch cursor, retraining outcomes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from healthpredict.core import layout, storage
from healthpredict.core.constants import MIN_BATCH_ROWS
from healthpredict.monitoring import lease as loop_lease
from healthpredict.monitoring import state as loop_state
from healthpredict.pipelines import monitoring, monitoring_step, training
from healthpredict.runs import NotebookRunError, ParameterError, papermill_task, record

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
B = MIN_BATCH_ROWS
ROWS = 3 * B + 10
RECORDS = str(Path(__file__).resolve().parents[1] / "notebooks" / "fixtures" / "records.py")


def test_names_are_safe_and_sort_with_the_runners():
    run_id = "manual__2025-01-02T03:04:05.123456+00:00"
    assert papermill_task.safe_name(run_id) == "manual__2025-01-02T03_04_05.123456_00_00"
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert papermill_task.run_dir_name("03_drift_monitor", run_id, when) == (
        "20250102T030405Z-03_drift_monitor-manual__2025-01-02T03_04_05.123456_00_00"
    )
    assert papermill_task.safe_name("../..") == "run"
    assert training.as_uri_list("a.csv, b.csv") == ["a.csv", "b.csv"]
    assert training.as_uri_list(["a.csv"]) == ["a.csv"] and training.as_uri_list(None) == []


def test_prepare_writes_the_derived_notebook_with_its_source(hp_env):
    prepared = papermill_task.prepare_notebook_run(
        "01_eda", {"split": "validation"}, run_id="manual__1", dag_id="d", task_id="t"
    )
    run_dir = Path(prepared["run_dir"])
    assert run_dir.parent == hp_env / "rendered" and run_dir.name.endswith("-01_eda-manual__1")
    source = NOTEBOOKS / "01_eda.py"
    assert prepared["notebook_path"] == str(source)
    assert prepared["notebook_sha256"] == storage.sha256(str(source))
    assert (
        prepared["parameters"]["split"] == "validation" and prepared["parameters"]["n_bins"] == 10
    )
    assert prepared["given_parameters"] == {"split": "validation"}
    assert prepared["output_ipynb"] == str(run_dir / "01_eda.ipynb")
    derived = nbformat.read(prepared["input_ipynb"], as_version=4)
    assert derived.metadata["kernelspec"]["name"] == "healthpredict"
    assert derived.metadata["healthpredict"]["source"]["sha256"] == prepared["notebook_sha256"]
    tags = [c.metadata.get("tags", []) for c in derived.cells]
    assert ["parameters"] in tags  # papermill finds where to inject
    json.dumps(prepared)  # XCom-safe


def test_prepare_sets_run_dir_and_refuses_bad_parameters_before_writing(hp_env):
    prepared = papermill_task.prepare_notebook_run(RECORDS, {"n": 4}, run_id="r")
    assert prepared["parameters"]["run_dir"] == prepared["run_dir"]
    assert prepared["notebook"] == "records" and prepared["parameters"]["n"] == 4
    with pytest.raises(ParameterError, match="unknown parameter 'bogus'"):
        papermill_task.prepare_notebook_run("01_eda", {"bogus": 1}, run_id="r2")
    with pytest.raises(ParameterError, match="parameter 'n_bins' must be int"):
        papermill_task.prepare_notebook_run("01_eda", {"n_bins": "ten"}, run_id="r3")
    assert len(list((hp_env / "rendered").glob("*-01_eda-*"))) == 0


def _executed(prepared, scraps: dict) -> None:
    """Write an 'executed' notebook holding scraps, as papermill would have."""
    from healthpredict.runs.scraps import SCRAP_MIMETYPE

    nb = nbformat.read(prepared["input_ipynb"], as_version=4)
    outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={SCRAP_MIMETYPE: {"name": k, "data": v, "encoder": "json", "version": 1}},
        )
        for k, v in scraps.items()
    ]
    nb.cells.append(nbformat.v4.new_code_cell("record(...)", outputs=outputs))
    nbformat.write(nb, prepared["output_ipynb"])


def test_finish_records_success_and_missing_scraps(hp_env):
    prepared = papermill_task.prepare_notebook_run("01_eda", {}, run_id="ok")
    _executed(prepared, {"data_source": "synthetic", "n_rows": 5, "target_rate": 0.2})
    prov = papermill_task.finish_notebook_run(prepared)
    assert prov["status"] == "succeeded" and prov["scraps"]["n_rows"] == 5
    assert storage.read_json(prov["run_json"]) == json.loads(json.dumps(prov, default=str))
    assert Path(prov["html"]).read_text().lstrip().lower().startswith("<!doctype html")
    executed = nbformat.read(prepared["output_ipynb"], as_version=4)
    assert executed.metadata["papermill"]["input_path"] == prepared["notebook_path"]
    assert papermill_task.read_run_scraps(prepared)["target_rate"] == 0.2
    gallery = (hp_env / "rendered" / "index.html").read_text()
    assert Path(prepared["run_dir"]).name in gallery

    partial = papermill_task.prepare_notebook_run("01_eda", {}, run_id="partial")
    _executed(partial, {"data_source": "synthetic"})
    prov = papermill_task.finish_notebook_run(partial)
    assert prov["status"] == "failed" and prov["error"]["ename"] == "MissingScraps"
    assert "n_rows, target_rate" in prov["error"]["evalue"]
    with pytest.raises(NotebookRunError, match="MissingScraps: required scraps missing"):
        record.raise_if_failed(prov)
    with pytest.raises(NotebookRunError, match="required scraps missing: n_rows"):
        papermill_task.read_run_scraps(partial)


def test_finish_records_a_run_that_left_no_notebook(hp_env):
    prepared = papermill_task.prepare_notebook_run("01_eda", {}, run_id="killed")
    prov = papermill_task.finish_notebook_run(prepared, RuntimeError("kernel died"))
    assert prov["status"] == "failed" and prov["error"]["evalue"] == "kernel died"
    assert Path(prov["html"]).exists() and Path(prov["run_json"]).exists()


@pytest.fixture
def stream(hp_env):
    frame = pd.DataFrame({"encounter_id": range(ROWS), "age": ["[50-60)"] * ROWS})
    return storage.write_csv(str(hp_env / "future.csv"), frame)


def test_simulate_batch_names_batches_by_start_and_ends(stream):
    # 100 rows in batches of 30: the last window takes the 10-row tail the monitor would refuse.
    batch = monitoring.simulate_batch(stream, 2 * B, B)
    assert batch == {
        "has_data": True,
        "start": 2 * B,
        "end": ROWS,
        "batch_uri": storage.join(layout.monitoring_dir(), "batches", "batch_0000060.csv"),
        "total_rows": ROWS,
    }
    assert storage.read_csv(batch["batch_uri"])["encounter_id"].tolist() == list(range(2 * B, ROWS))
    assert monitoring.simulate_batch(stream, ROWS, B) == {
        "has_data": False,
        "start": ROWS,
        "total_rows": ROWS,
    }


def test_simulate_batch_refuses_a_batch_size_the_cli_refuses(stream):
    with pytest.raises(ValueError, match=f"batch_size 1 is below the {B} rows the drift monitor"):
        monitoring.simulate_batch(stream, 0, 1)
    assert not storage.exists(layout.batch_csv("batch_0000000.csv"))


def _decision(batch_uri: str, retrain: bool, recent: list[str]) -> dict:
    return {
        "drift_status": "DRIFT_DETECTED" if retrain else "NO_DRIFT",
        "drifted_share": 0.1,
        "monitor_run_dir": "/runs/x",
        "retrain": retrain,
        "recent_batches": recent,
    }


def test_advance_state_moves_once_and_only_from_the_batch_start(stream):
    batch = monitoring.simulate_batch(stream, 0, B)
    state = monitoring.iteration_state()
    assert state == {
        "next_batch_start_index": 0,
        "batches_since_retrain": [],
        "reference_uri": None,
        "model_reference_uri": None,
        "batches_done": 0,
    }
    entry = monitoring.advance_state(
        batch, _decision(batch["batch_uri"], False, [batch["batch_uri"]]), model_uri="models:/M/1"
    )
    assert entry["start"] == 0 and entry["end"] == B and entry["retrain"] is None
    assert entry["model_uri"] == "models:/M/1"
    saved = loop_state.LoopState.load()
    assert saved.next_batch_start_index == B and saved.batches_since_retrain == [batch["batch_uri"]]
    # The same batch again (a stale run): refused, nothing changed.
    with pytest.raises(RuntimeError, match=f"cursor is at {B}, not at this batch's start 0"):
        monitoring.advance_state(batch, _decision(batch["batch_uri"], False, []), model_uri="m")
    assert loop_state.LoopState.load() == saved


def test_awaited_promotion_sets_the_reference_like_the_loop(stream):
    first = monitoring.simulate_batch(stream, 0, B)
    monitoring.advance_state(
        first, _decision(first["batch_uri"], False, [first["batch_uri"]]), model_uri="m"
    )
    second = monitoring.simulate_batch(stream, B, B)
    recent = [first["batch_uri"], second["batch_uri"]]
    outcome = {
        "decision": "PROMOTED",
        "promoted": True,
        "reason": "better",
        "challenger_version": "2",
        "holdout_path": "/holdouts/h.csv",
        "run_dir": "/runs/r",
    }
    entry = monitoring.advance_state(
        second,
        _decision(second["batch_uri"], True, recent),
        model_uri="m",
        retrain_outcome=outcome,
        trigger_run_id="retrain__x",
    )
    assert entry["retrain"] == {**outcome, "triggered_run_id": "retrain__x"}
    state = loop_state.LoopState.load()
    assert state.batches_since_retrain == [] and state.next_batch_start_index == 2 * B
    assert Path(state.reference_uri).name == "reference_0000030.csv"
    assert len(storage.read_csv(state.reference_uri)) == 2 * B
    assert state.model_reference_uri == "/holdouts/h.csv"
    assert monitoring.iteration_state()["reference_uri"] == state.reference_uri
    # The next monitoring run compares against both new references.
    third = monitoring.simulate_batch(stream, 2 * B, B)
    params = monitoring_step.monitor_parameters(
        state, third["batch_uri"], "/prepared/initial_train.csv"
    )
    assert params == {
        "new_data_path": third["batch_uri"],
        "reference_data_path": state.reference_uri,
        "model_reference_path": "/holdouts/h.csv",
    }


def test_not_awaited_retraining_keeps_the_recent_batches(stream):
    batch = monitoring.simulate_batch(stream, 0, B)
    entry = monitoring.advance_state(
        batch,
        _decision(batch["batch_uri"], True, [batch["batch_uri"]]),
        model_uri="m",
        trigger_run_id="retrain__y",
    )
    assert entry["retrain"] == {"triggered_run_id": "retrain__y", "awaited": False}
    assert loop_state.LoopState.load().batches_since_retrain == [batch["batch_uri"]]


def test_iteration_state_refuses_while_the_cli_loop_runs(hp_env):
    with loop_lease.lease():
        with pytest.raises(loop_lease.LoopLockedError, match="another loop runner"):
            monitoring.iteration_state()


def test_retraining_outcome_fails_closed(hp_env):
    assert monitoring.retraining_outcome("retrain__a", awaited=False) is None
    with pytest.raises(RuntimeError, match="left no outcome"):
        monitoring.retraining_outcome("retrain__a", awaited=True)
    storage.write_json(training.retrain_result_uri("retrain__a"), {"promoted": True})
    assert monitoring.retraining_outcome("retrain__a", awaited=True) == {"promoted": True}


class _TI:
    def __init__(self, pushed):
        self.pushed = pushed

    def xcom_pull(self, task_ids, key="return_value"):
        return self.pushed.get((task_ids, key))


def test_promotion_gate_skips_unless_promoted(hp_env):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from airflow.sdk.exceptions import AirflowSkipException

    gate = monitoring.promotion_gate("trigger_retraining_dag")
    ti = _TI({("trigger_retraining_dag", "trigger_run_id"): "retrain__b"})
    with pytest.raises(AirflowSkipException, match="not awaited"):
        gate({"params": {"wait_for_retraining": False}, "ti": ti})
    storage.write_json(
        training.retrain_result_uri("retrain__b"),
        {"promoted": False, "decision": "REJECTED", "reason": "worse"},
    )
    with pytest.raises(AirflowSkipException, match="retraining REJECTED: worse"):
        gate({"params": {"wait_for_retraining": True}, "ti": ti})
    storage.write_json(training.retrain_result_uri("retrain__b"), {"promoted": True})
    gate({"params": {"wait_for_retraining": True}, "ti": ti})  # goes ahead


def test_training_needs_prepared_data(hp_env):
    with pytest.raises(FileNotFoundError, match="prepare_data=true"):
        training.ensure_prepared_data(False)
