"""Bad batches: each one is stopped with a message naming the problem, and nothing moves.

Validation happens in the drift monitor's first code cell (``healthpredict.mlops.monitor.monitor`` reads and checks
the batch before any MLflow run or Evidently work), so most cases call ``monitor`` in
this process; two go through the real loop and notebook kernel to prove what a failed batch
leaves behind: a failed rendered run, an unmoved cursor and the batch file kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from fault_helpers import BATCH_ROWS, MONITOR, mlflow_runs, run_dirs, run_records, state_bytes

from healthpredict.core import constants, storage
from healthpredict.core.stages import LoopParams, MonitorParams
from healthpredict.data.schema import RawSchemaError
from healthpredict.data.uci import UCIDataError
from healthpredict.mlops.monitor import BatchTooSmallError, monitor
from healthpredict.monitoring import state as loop_state
from healthpredict.pipelines import local_loop, monitoring_step
from healthpredict.runs import NotebookRunError

pytestmark = pytest.mark.faults


def _clean(env, start: int = 0, rows: int = BATCH_ROWS) -> pd.DataFrame:
    return env.future.iloc[start : start + rows].reset_index(drop=True)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def _empty(env):
    return b""


def _header_only(env):
    return _csv(_clean(env)).split(b"\n", 1)[0] + b"\n"


def _missing_column(env):
    return _csv(_clean(env).drop(columns=["A1Cresult"]))


def _renamed_column(env):
    return _csv(_clean(env).rename(columns={"glyburide-metformin": "glyburide_metformin"}))


def _wrong_type(env):
    frame = _clean(env).astype({"num_lab_procedures": object})
    frame.loc[[3, 40, 41], "num_lab_procedures"] = ["forty", "many", "n/a"]
    return _csv(frame)


def _unknown_categories(env):
    frame = _clean(env)
    frame.loc[0:6, "race"] = "Martian"
    frame.loc[7:8, "race"] = "Klingon"
    return _csv(frame)


def _duplicate_ids(env):
    frame = _clean(env)
    frame.loc[1, "encounter_id"] = frame.loc[0, "encounter_id"]
    frame.loc[11, "encounter_id"] = frame.loc[10, "encounter_id"]
    return _csv(frame)


def _non_utf8(env):
    data = _csv(_clean(env))
    line_3 = data.index(b"\n", data.index(b"\n", data.index(b"\n") + 1) + 1) + 1
    return data[:line_3] + "Caf\u00e9".encode("latin-1") + data[line_3:]  # 0xe9 on line 4


def _truncated(env):
    data = _csv(_clean(env))
    last_line = data.rindex(b"\n", 0, len(data) - 1) + 1
    return data[: last_line + 40]  # cut mid-line, 40 bytes into the last row


def _one_row(env):
    return _csv(_clean(env, rows=1))


BAD_BATCHES = {
    "empty": (_empty, UCIDataError, ["the file is empty"]),
    "header_only": (_header_only, RawSchemaError, ["the frame is empty (0 rows)"]),
    "missing_column": (_missing_column, RawSchemaError, ["missing columns: 'A1Cresult'"]),
    "renamed_column": (
        _renamed_column,
        RawSchemaError,
        ["missing columns: 'glyburide-metformin'", "unexpected columns: 'glyburide_metformin'"],
    ),
    "wrong_type": (
        _wrong_type,
        RawSchemaError,
        ["num_lab_procedures: 3 value(s) are not integers", "'forty'", "'many'", "'n/a'"],
    ),
    "unknown_categories": (
        _unknown_categories,
        RawSchemaError,
        ["race: 9 value(s) in 2 unknown categories", "'Martian' (7x)", "'Klingon' (2x)"],
    ),
    "duplicate_ids": (
        _duplicate_ids,
        RawSchemaError,
        ["encounter_id: 2 value(s) appear more than once (4 rows)"],
    ),
    "non_utf8": (_non_utf8, UCIDataError, ["not UTF-8 text (byte 0xe9", "line 4"]),
    "truncated": (
        _truncated,
        UCIDataError,
        ["truncated file", f"line {BATCH_ROWS + 1}", "cut mid-line"],
    ),
    "one_row": (
        _one_row,
        BatchTooSmallError,
        ["too few rows", "has 1 row(s)", f"at least {constants.MIN_BATCH_ROWS}"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_is_refused_before_any_work(env, case):
    make, error, phrases = BAD_BATCHES[case]
    uri = storage.write_bytes(env.tmp / "batches" / f"{case}.csv", make(env))
    reports = env.tmp / "reports" / case
    with pytest.raises(error) as info:
        monitor(MonitorParams(new_data_path=uri, evidently_reports_path=str(reports)))
    message = str(info.value)
    assert uri in message  # names the file ...
    for phrase in phrases:  # ... and the problem
        assert phrase in message, message
    # Nothing half-done: no MLflow run, no report; the file is left as it was for inspection.
    assert mlflow_runs() == [] and not reports.exists()
    assert storage.read_bytes(uri) == make(env)


def test_labels_of_one_class_are_monitored_without_performance(env):
    """A labelled batch whose labels are all one class: ROC AUC undefined, the rest decided."""
    frame = _clean(env, start=BATCH_ROWS)
    frame["readmitted"] = "NO"
    uri = storage.write_csv(env.tmp / "batches" / "one_class.csv", frame)
    result = monitor(
        MonitorParams(
            new_data_path=uri, evidently_reports_path=str(env.tmp / "reports" / "one_class")
        )
    )
    assert result.status in (constants.DRIFT_DETECTED, constants.NO_DRIFT)
    assert result.performance_drop is None and "performance" not in result.report_paths
    assert set(result.report_paths) == {"data_drift", "prediction_drift"}
    (run,) = mlflow_runs()
    assert run.info.status == "FINISHED" and run.data.tags["drift_status"] == result.status


def test_short_tail_of_the_stream_joins_the_last_batch():
    """The monitor refuses tiny batches, so the loop never cuts one at the end of the stream."""
    tail = constants.MIN_BATCH_ROWS - 1
    assert loop_state.next_window(4500, 5000 + tail, 500) == loop_state.BatchWindow(
        4500, 5000 + tail
    )
    assert loop_state.next_window(
        4500, 5000 + constants.MIN_BATCH_ROWS, 500
    ) == loop_state.BatchWindow(4500, 5000)
    assert loop_state.remaining_batches(5000 + tail, 0, 500) == 10
    assert loop_state.remaining_batches(5000 + constants.MIN_BATCH_ROWS, 0, 500) == 11
    with pytest.raises(ValueError, match="below the 30 rows the drift monitor needs"):
        # built without validation, to reach the loop's own check
        local_loop.run_loop(LoopParams.model_construct(batch_size=10))


def _assert_failed_run(env, ename: str, phrase: str) -> dict:
    """The one failed drift-monitor run: executed notebook, HTML and run.json, error named."""
    (folder,) = run_dirs(env.rendered, MONITOR)
    (record,) = run_records(env.rendered, MONITOR)
    assert record["status"] == "failed" and record["run_dir"] == str(folder)
    assert record["error"]["ename"] == ename and phrase in record["error"]["evalue"]
    notebook = json.loads((folder / f"{MONITOR}.ipynb").read_text())
    assert notebook["metadata"]["healthpredict"]["status"] == "failed"
    html = (folder / f"{MONITOR}.html").read_text()
    assert ename in html and phrase in html
    return record


def _start_mid_stream(env) -> bytes:
    """A state as if the first batch were done: the cursor at row 500."""
    state = loop_state.LoopState(next_batch_start_index=BATCH_ROWS, history=[{"start": 0}])
    state.save()
    return state_bytes(env.monitoring)


def test_bad_rows_in_the_stream_stop_the_loop(env):
    """The real loop on a stream whose second batch holds unknown categories."""
    future = env.future.copy()
    future.loc[BATCH_ROWS : BATCH_ROWS + 6, "race"] = "Martian"
    storage.write_csv(env.data_dir / "future_data.csv", future)
    before = _start_mid_stream(env)
    with pytest.raises(NotebookRunError) as info:
        local_loop.run_loop(LoopParams(batch_size=BATCH_ROWS, max_batches=1))
    message = "\n".join([str(info.value), *info.value.__notes__])
    assert "RawSchemaError" in message and "race: 7 value(s) in 1 unknown category" in message
    assert "'Martian' (7x)" in message
    assert f"batch rows {BATCH_ROWS}-{2 * BATCH_ROWS}" in message
    assert f"the next run starts again at row {BATCH_ROWS}" in message
    _assert_failed_run(env, "RawSchemaError", "race: 7 value(s) in 1 unknown category")
    # The cursor did not move, the batch is kept, the lease was released, nothing was logged.
    assert state_bytes(env.monitoring) == before
    batch = pd.read_csv(env.monitoring / "batches" / f"batch_{BATCH_ROWS:07d}.csv")
    assert (batch["race"] == "Martian").sum() == 7
    assert not (env.monitoring / "lease.json").exists()
    assert mlflow_runs() == []


def test_truncated_batch_file_fails_the_notebook_run(env, monkeypatch):
    """The batch file is cut mid-line after the loop wrote it (a full disk, a killed copy)."""
    real_write = loop_state.write_batch

    def write_then_truncate(future, window, root=None):
        uri = real_write(future, window, root)
        data = storage.read_bytes(uri)
        storage.write_bytes(uri, data[: len(data) // 2])
        return uri

    monkeypatch.setattr(monitoring_step, "write_batch", write_then_truncate)
    before = _start_mid_stream(env)
    state = loop_state.LoopState.load()
    with pytest.raises(NotebookRunError) as info:
        monitoring_step.monitoring_step(
            env.future,
            state,
            monitoring_step.StepConfig(
                batch_size=BATCH_ROWS,
                model_uri="models:/HealthPredict@champion",
                default_reference=str(env.data_dir / "initial_train.csv"),
            ),
        )
    assert "UCIDataError" in str(info.value) and "truncated file" in str(info.value)
    _assert_failed_run(env, "UCIDataError", "truncated file")
    assert state_bytes(env.monitoring) == before and state.next_batch_start_index == BATCH_ROWS
    kept = env.monitoring / "batches" / f"batch_{BATCH_ROWS:07d}.csv"
    assert kept.exists() and not kept.read_bytes().endswith(b"\n")
    assert mlflow_runs() == []


_BIG_BATCH = textwrap.dedent(
    """
    import json, resource, sys
    from healthpredict import runs
    from healthpredict.core import storage
    from healthpredict.data import synthetic

    uri = storage.write_csv(sys.argv[1], synthetic.generate(200_000, seed=3))
    result = runs.run("03_drift_monitor", {"new_data_path": uri}, progress=False)
    print(json.dumps({
        "status": result.status,
        "batch_rows": result.scraps["batch_rows"],
        "drift_status": result.scraps["drift_status"],
        "runner_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "kernel_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }))
    """
)


@pytest.mark.slow
def test_200k_row_batch_is_monitored_within_memory(env):
    """200,000 rows through the real notebook; peak RSS of the runner and of its kernel < 4 GB."""
    done = subprocess.run(
        [sys.executable, "-c", _BIG_BATCH, str(env.tmp / "big.csv")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["status"] == "succeeded" and figures["batch_rows"] == 200_000
    assert figures["drift_status"] in (constants.DRIFT_DETECTED, constants.NO_DRIFT)
    limit_kb = 4 * 1024 * 1024  # ru_maxrss is in KiB on Linux
    assert 0 < figures["runner_kb"] < limit_kb and 0 < figures["kernel_kb"] < limit_kb, figures
    # Measured, not vacuous: the kernel (the runner's child) held the batch and Evidently.
    assert figures["kernel_kb"] > 200 * 1024
    print(
        f"peak RSS: runner {figures['runner_kb'] / 1024:.0f} MiB, "
        f"kernel {figures['kernel_kb'] / 1024:.0f} MiB"
    )
