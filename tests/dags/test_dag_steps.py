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
from healthpredict.core.stages import LoopParams
from healthpredict.monitoring import lease as loop_lease
from healthpredict.monitoring import state as loop_state
from healthpredict.monitoring.labels import LabelPlan
from healthpredict.pipelines import monitoring, monitoring_step, step_labels, training
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
    written = storage.read_json(prov["run_json"])  # portable: <rendered>/..., <storage>/...
    assert record.resolve_record(written) == json.loads(json.dumps(prov, default=str))
    assert Path(prov["html"]).read_text().lstrip().lower().startswith("<!doctype html")
    executed = nbformat.read(prepared["output_ipynb"], as_version=4)
    assert executed.metadata["papermill"]["input_path"] == written["notebook_path"]
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
    frame = pd.DataFrame(
        {
            "encounter_id": range(ROWS),
            "age": ["[50-60)"] * ROWS,
            "readmitted": (["NO", "<30", ">30"] * ROWS)[:ROWS],
        }
    )
    return storage.write_csv(str(hp_env / "future.csv"), frame)


LOOP = LoopParams(batch_size=B)  # the replay, labels one batch late


def _cut(stream: str, loop: LoopParams = LOOP) -> dict:
    """The DAG's first two tasks: read the state, cut the batch at its cursor."""
    return monitoring.simulate_batch(stream, monitoring.iteration_state(), loop)


def test_simulate_batch_names_batches_by_start_and_ends(stream):
    # 100 rows in batches of 30: the last window takes the 10-row tail the monitor would refuse.
    loop_state.LoopState(next_batch_start_index=2 * B).save()
    batch = _cut(stream)
    uri = storage.join(layout.monitoring_dir(), "batches", "batch_0000060.csv")
    assert {k: batch[k] for k in ("has_data", "start", "end", "batch_uri", "total_rows")} == {
        "has_data": True,
        "start": 2 * B,
        "end": ROWS,
        "batch_uri": uri,
        "total_rows": ROWS,
    }
    written = storage.read_csv(batch["batch_uri"])
    assert written["encounter_id"].tolist() == list(range(2 * B, ROWS))
    assert "readmitted" not in written.columns  # monitored without its labels
    assert batch["labels"]["pending"][0]["due"] == 1 and batch["labels"]["labelled"] == []
    json.dumps(batch)  # XCom-safe
    loop_state.LoopState(next_batch_start_index=ROWS).save()
    assert _cut(stream) == {"has_data": False, "start": ROWS, "total_rows": ROWS}


def test_simulate_batch_refuses_a_batch_size_the_cli_refuses(stream):
    with pytest.raises(ValueError, match=f"batch_size 1 is below the {B} rows the drift monitor"):
        monitoring.simulate_batch(
            stream, monitoring.iteration_state(), LOOP.model_copy(update={"batch_size": 1})
        )
    assert not storage.exists(layout.batch_csv("batch_0000000.csv"))


def test_dag_params_build_the_loop_settings():
    loop = monitoring.loop_params(
        {"batch_size": 500, "retrain_window": None, "label_delay_batches": 0, "other": 1}
    )
    assert (loop.batch_size, loop.retrain_window, loop.label_delay_batches) == (500, None, 0)
    with pytest.raises(ValueError, match="label_source"):
        monitoring.loop_params({"label_source": "guess"})


def _scraps(retrain: bool) -> dict:
    return {
        "drift_status": "DRIFT_DETECTED",
        "drifted_share": 0.1,
        "retrain": retrain,
        "retrain_triggers": ["data_growth"] if retrain else [],
        "retrain_reasons": ["grown"] if retrain else [],
    }


def _decision(batch: dict, retrain: bool) -> dict:
    """The decision the DAG's decide task takes on ``batch`` from the given scraps."""
    state = loop_state.LoopState.load()
    plan = LabelPlan.from_dict(batch["labels"])
    return monitoring_step.decide(
        _scraps(retrain),
        "/runs/x",
        step_labels.labelled_after(state, plan),
        step_labels.new_labelled_after(state, plan),
    ).as_dict()


def test_advance_state_moves_once_and_only_from_the_batch_start(stream):
    state = monitoring.iteration_state()
    assert state == {
        "next_batch_start_index": 0,
        "reference_uri": None,
        "model_reference_uri": None,
        "pending_labels": [],
        "labelled_batches": [],
        "new_labelled": [],
        "label_gaps": [],
        "unknown_labels": None,
        "batches_done": 0,
    }
    batch = _cut(stream)
    decision = _decision(batch, retrain=True)
    assert not decision["retrain"] and "no labelled rows yet" in decision["skipped"]
    entry = monitoring.advance_state(batch, decision, model_uri="models:/M/1")
    assert entry["start"] == 0 and entry["end"] == B and entry["retrain"] is None
    assert entry["model_uri"] == "models:/M/1" and entry["retrain_skipped"] == decision["skipped"]
    saved = loop_state.LoopState.load()
    assert saved.next_batch_start_index == B and [p["start"] for p in saved.pending_labels] == [0]
    # The same batch again (a stale run): refused, nothing changed.
    with pytest.raises(RuntimeError, match=f"cursor is at {B}, not at this batch's start 0"):
        monitoring.advance_state(batch, decision, model_uri="m")
    assert loop_state.LoopState.load() == saved


def test_awaited_promotion_sets_the_reference_like_the_loop(stream):
    first = _cut(stream)
    monitoring.advance_state(first, _decision(first, False), model_uri="m")
    second = _cut(stream)  # batch 0's labels arrive
    decision = _decision(second, True)
    (labelled,) = decision["retraining_data"]
    assert decision["retrain"] and decision["gate_data"] == [labelled]
    outcome = {
        "decision": "PROMOTED",
        "promoted": True,
        "reason": "better",
        "challenger_version": "2",
        "holdout_path": "/holdouts/h.csv",
        "run_dir": "/runs/r",
    }
    entry = monitoring.advance_state(
        second, decision, model_uri="m", retrain_outcome=outcome, trigger_run_id="retrain__x"
    )
    assert entry["retrain"] == {
        **outcome,
        "retraining_data_path": [labelled],
        "triggered_run_id": "retrain__x",
        "champion_version": None,
        "model_name": None,
        "alias_moved": True,  # an outcome without the key: the retraining promoted by itself
    }
    state = loop_state.LoopState.load()
    assert state.new_labelled == [] and state.next_batch_start_index == 2 * B
    assert Path(state.reference_uri).name == "reference_0000030.csv"
    assert storage.read_csv(state.reference_uri)["readmitted"].notna().all()
    assert len(storage.read_csv(state.reference_uri)) == B
    assert state.model_reference_uri == "/holdouts/h.csv"
    assert monitoring.iteration_state()["reference_uri"] == state.reference_uri
    # The next monitoring run compares against both new references.
    third = _cut(stream)
    params = monitoring_step.monitor_parameters(
        state,
        third["batch_uri"],
        "/prepared/initial_train.csv",
        LabelPlan.from_dict(third["labels"]),
    )
    assert params == {
        "new_data_path": third["batch_uri"],
        "reference_data_path": state.reference_uri,
        "model_reference_path": "/holdouts/h.csv",
        "labelled_data_path": [layout.labelled_csv(f"labelled_{B:07d}.csv")],
        "new_labelled_rows": B,
    }


def _versions(name: str, count: int):
    """A registered model with ``count`` versions (no artifacts needed), champion v1."""
    from mlflow import MlflowClient

    from healthpredict.mlops import registry, tracking

    tracking.setup_mlflow()
    client = MlflowClient()
    client.create_registered_model(name)
    for _ in range(count):
        client.create_model_version(name, source="file:///nowhere")
    registry.promote(name, "1")
    return client


def _champion(client, name: str) -> tuple[str, str | None]:
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    return aliases.get("champion"), aliases.get("previous")


def test_an_awaited_promotion_is_recorded_before_the_alias_moves(stream):
    client = _versions("M", 3)
    first = _cut(stream)
    monitoring.advance_state(first, _decision(first, False), model_uri="m")
    second = _cut(stream)
    decision = _decision(second, True)
    outcome = {  # the retraining's gate promoted and left the alias to this DAG
        "decision": "PROMOTED",
        "promoted": True,
        "alias_moved": False,
        "reason": "better",
        "challenger_version": "2",
        "champion_version": "1",
        "model_name": "M",
        "holdout_path": "/holdouts/h.csv",
        "run_dir": "/runs/r",
    }
    args = {"model_uri": "models:/M/1", "retrain_outcome": outcome, "trigger_run_id": "r__2"}
    entry = monitoring.advance_state(second, decision, dag_run_id="run_2", **args)
    assert _champion(client, "M") == ("2", "1") and entry["retrain"]["promoted"]
    state = loop_state.LoopState.load()
    assert state.promotion is None and state.next_batch_start_index == 2 * B
    # A retried advance_state (its first try died after committing) changes nothing.
    assert monitoring.advance_state(second, decision, dag_run_id="run_2", **args) == entry
    assert loop_state.LoopState.load() == state

    # A run that died between recording a promotion and moving the alias: the next run's first
    # task finishes it before anything else.
    third = _cut(stream)
    state.promotion = {
        "batch_start": third["start"],
        "model_name": "M",
        "challenger_version": "3",
        "previous_champion": "2",
        "rollback": state.snapshot(),
    }
    state.next_batch_start_index = third["end"]
    state.save()
    monitoring.iteration_state()
    assert _champion(client, "M") == ("3", "2")
    assert loop_state.LoopState.load().promotion is None


def test_not_awaited_retraining_keeps_the_batches_new(stream):
    first = _cut(stream)
    monitoring.advance_state(first, _decision(first, False), model_uri="m")
    second = _cut(stream)
    entry = monitoring.advance_state(
        second, _decision(second, True), model_uri="m", trigger_run_id="retrain__y"
    )
    assert entry["retrain"] == {"triggered_run_id": "retrain__y", "awaited": False}
    assert len(loop_state.LoopState.load().new_labelled) == 1


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
