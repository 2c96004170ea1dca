"""What the DAG tasks do, without Airflow: notebook runs, batch cursor, retraining outcomes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from healthpredict.core import storage
from healthpredict.pipelines import loop, orchestration
from healthpredict.runs import NotebookRunError, ParameterError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
RECORDS = str(Path(__file__).resolve().parents[1] / "notebooks" / "fixtures" / "records.py")


def test_names_are_safe_and_sort_with_the_runners():
    run_id = "manual__2025-01-02T03:04:05.123456+00:00"
    assert orchestration.safe_name(run_id) == "manual__2025-01-02T03_04_05.123456_00_00"
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert orchestration.run_dir_name("03_drift_monitor", run_id, when) == (
        "20250102T030405Z-03_drift_monitor-manual__2025-01-02T03_04_05.123456_00_00"
    )
    assert orchestration.safe_name("../..") == "run"
    assert orchestration.as_uri_list("a.csv, b.csv") == ["a.csv", "b.csv"]
    assert (
        orchestration.as_uri_list(["a.csv"]) == ["a.csv"] and orchestration.as_uri_list(None) == []
    )


def test_prepare_writes_the_derived_notebook_with_its_source(hp_env):
    prepared = orchestration.prepare_notebook_run(
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
    prepared = orchestration.prepare_notebook_run(RECORDS, {"n": 4}, run_id="r")
    assert prepared["parameters"]["run_dir"] == prepared["run_dir"]
    assert prepared["notebook"] == "records" and prepared["parameters"]["n"] == 4
    with pytest.raises(ParameterError, match="unknown parameter 'bogus'"):
        orchestration.prepare_notebook_run("01_eda", {"bogus": 1}, run_id="r2")
    with pytest.raises(ParameterError, match="parameter 'n_bins' must be int"):
        orchestration.prepare_notebook_run("01_eda", {"n_bins": "ten"}, run_id="r3")
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
    prepared = orchestration.prepare_notebook_run("01_eda", {}, run_id="ok")
    _executed(prepared, {"data_source": "synthetic", "n_rows": 5, "target_rate": 0.2})
    prov = orchestration.finish_notebook_run(prepared)
    assert prov["status"] == "succeeded" and prov["scraps"]["n_rows"] == 5
    assert storage.read_json(prov["run_json"]) == json.loads(json.dumps(prov, default=str))
    assert Path(prov["html"]).read_text().lstrip().lower().startswith("<!doctype html")
    executed = nbformat.read(prepared["output_ipynb"], as_version=4)
    assert executed.metadata["papermill"]["input_path"] == prepared["notebook_path"]
    assert orchestration.read_run_scraps(prepared)["target_rate"] == 0.2
    gallery = (hp_env / "rendered" / "index.html").read_text()
    assert Path(prepared["run_dir"]).name in gallery

    partial = orchestration.prepare_notebook_run("01_eda", {}, run_id="partial")
    _executed(partial, {"data_source": "synthetic"})
    prov = orchestration.finish_notebook_run(partial)
    assert prov["status"] == "failed" and prov["error"]["ename"] == "MissingScraps"
    assert "n_rows, target_rate" in prov["error"]["evalue"]
    with pytest.raises(NotebookRunError, match="MissingScraps: required scraps missing"):
        orchestration.raise_if_failed(prov)
    with pytest.raises(NotebookRunError, match="required scraps missing: n_rows"):
        orchestration.read_run_scraps(partial)


def test_finish_records_a_run_that_left_no_notebook(hp_env):
    prepared = orchestration.prepare_notebook_run("01_eda", {}, run_id="killed")
    prov = orchestration.finish_notebook_run(prepared, RuntimeError("kernel died"))
    assert prov["status"] == "failed" and prov["error"]["evalue"] == "kernel died"
    assert Path(prov["html"]).exists() and Path(prov["run_json"]).exists()


@pytest.fixture
def stream(hp_env):
    frame = pd.DataFrame({"encounter_id": range(10), "age": ["[50-60)"] * 10})
    return storage.write_csv(str(hp_env / "future.csv"), frame)


def test_simulate_batch_names_batches_by_start_and_ends(stream):
    batch = orchestration.simulate_batch(stream, 8, 4)
    assert batch == {
        "has_data": True,
        "start": 8,
        "end": 10,
        "batch_uri": storage.join(loop.monitoring_dir(), "batches", "batch_0000008.csv"),
        "total_rows": 10,
    }
    assert storage.read_csv(batch["batch_uri"])["encounter_id"].tolist() == [8, 9]
    assert orchestration.simulate_batch(stream, 10, 4) == {
        "has_data": False,
        "start": 10,
        "total_rows": 10,
    }


def _decision(batch_uri: str, retrain: bool, recent: list[str]) -> dict:
    return {
        "drift_status": "DRIFT_DETECTED" if retrain else "NO_DRIFT",
        "drifted_share": 0.1,
        "monitor_run_dir": "/runs/x",
        "retrain": retrain,
        "recent_batches": recent,
    }


def test_advance_state_moves_once_and_only_from_the_batch_start(stream):
    batch = orchestration.simulate_batch(stream, 0, 4)
    state = orchestration.iteration_state()
    assert state == {
        "next_batch_start_index": 0,
        "batches_since_retrain": [],
        "reference_uri": None,
        "model_reference_uri": None,
        "batches_done": 0,
    }
    entry = orchestration.advance_state(
        batch, _decision(batch["batch_uri"], False, [batch["batch_uri"]]), model_uri="models:/M/1"
    )
    assert entry["start"] == 0 and entry["end"] == 4 and entry["retrain"] is None
    assert entry["model_uri"] == "models:/M/1"
    saved = loop.LoopState.load()
    assert saved.next_batch_start_index == 4 and saved.batches_since_retrain == [batch["batch_uri"]]
    # The same batch again (a stale run): refused, nothing changed.
    with pytest.raises(RuntimeError, match="cursor is at 4, not at this batch's start 0"):
        orchestration.advance_state(batch, _decision(batch["batch_uri"], False, []), model_uri="m")
    assert loop.LoopState.load() == saved


def test_awaited_promotion_sets_the_reference_like_the_loop(stream):
    first = orchestration.simulate_batch(stream, 0, 4)
    orchestration.advance_state(
        first, _decision(first["batch_uri"], False, [first["batch_uri"]]), model_uri="m"
    )
    second = orchestration.simulate_batch(stream, 4, 4)
    recent = [first["batch_uri"], second["batch_uri"]]
    outcome = {
        "decision": "PROMOTED",
        "promoted": True,
        "reason": "better",
        "challenger_version": "2",
        "holdout_path": "/holdouts/h.csv",
        "run_dir": "/runs/r",
    }
    entry = orchestration.advance_state(
        second,
        _decision(second["batch_uri"], True, recent),
        model_uri="m",
        retrain_outcome=outcome,
        trigger_run_id="retrain__x",
    )
    assert entry["retrain"] == {**outcome, "triggered_run_id": "retrain__x"}
    state = loop.LoopState.load()
    assert state.batches_since_retrain == [] and state.next_batch_start_index == 8
    assert Path(state.reference_uri).name == "reference_0000004.csv"
    assert len(storage.read_csv(state.reference_uri)) == 8
    assert state.model_reference_uri == "/holdouts/h.csv"
    assert orchestration.iteration_state()["reference_uri"] == state.reference_uri
    # The next monitoring run compares against both new references.
    third = orchestration.simulate_batch(stream, 8, 4)
    params = loop.monitor_parameters(state, third["batch_uri"], "/prepared/initial_train.csv")
    assert params == {
        "new_data_path": third["batch_uri"],
        "reference_data_path": state.reference_uri,
        "model_reference_path": "/holdouts/h.csv",
    }


def test_not_awaited_retraining_keeps_the_recent_batches(stream):
    batch = orchestration.simulate_batch(stream, 0, 4)
    entry = orchestration.advance_state(
        batch,
        _decision(batch["batch_uri"], True, [batch["batch_uri"]]),
        model_uri="m",
        trigger_run_id="retrain__y",
    )
    assert entry["retrain"] == {"triggered_run_id": "retrain__y", "awaited": False}
    assert loop.LoopState.load().batches_since_retrain == [batch["batch_uri"]]


def test_iteration_state_refuses_while_the_cli_loop_runs(hp_env):
    with loop.lease():
        with pytest.raises(loop.LoopLockedError, match="another loop runner"):
            orchestration.iteration_state()


def test_retraining_outcome_fails_closed(hp_env):
    assert orchestration.retraining_outcome("retrain__a", awaited=False) is None
    with pytest.raises(RuntimeError, match="left no outcome"):
        orchestration.retraining_outcome("retrain__a", awaited=True)
    storage.write_json(orchestration.retrain_result_uri("retrain__a"), {"promoted": True})
    assert orchestration.retraining_outcome("retrain__a", awaited=True) == {"promoted": True}


class _TI:
    def __init__(self, pushed):
        self.pushed = pushed

    def xcom_pull(self, task_ids, key="return_value"):
        return self.pushed.get((task_ids, key))


def test_promotion_gate_skips_unless_promoted(hp_env):
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from airflow.sdk.exceptions import AirflowSkipException

    gate = orchestration.promotion_gate("trigger_retraining_dag")
    ti = _TI({("trigger_retraining_dag", "trigger_run_id"): "retrain__b"})
    with pytest.raises(AirflowSkipException, match="not awaited"):
        gate({"params": {"wait_for_retraining": False}, "ti": ti})
    storage.write_json(
        orchestration.retrain_result_uri("retrain__b"),
        {"promoted": False, "decision": "REJECTED", "reason": "worse"},
    )
    with pytest.raises(AirflowSkipException, match="retraining REJECTED: worse"):
        gate({"params": {"wait_for_retraining": True}, "ti": ti})
    storage.write_json(orchestration.retrain_result_uri("retrain__b"), {"promoted": True})
    gate({"params": {"wait_for_retraining": True}, "ti": ti})  # goes ahead


def test_training_needs_prepared_data(hp_env):
    with pytest.raises(FileNotFoundError, match="prepare_data=true"):
        orchestration.ensure_prepared_data(False)
