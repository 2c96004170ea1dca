"""The production model missing, or trained on another raw schema: stopped before any work.

The loop checks the model before it writes a batch or starts a kernel; the drift monitor
itself (``healthpredict monitor``, the notebook) checks it in its first code cell, before any
MLflow run or Evidently computation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fault_helpers import BATCH_ROWS, MONITOR, mlflow_runs, run_cli, run_records

from healthpredict import runs
from healthpredict.core import storage
from healthpredict.core.stages import LoopParams, MonitorParams
from healthpredict.data.schema import schema_hash
from healthpredict.mlops import registry, tracking
from healthpredict.mlops.monitor import ModelSchemaError, monitor
from healthpredict.pipelines import local_loop

pytestmark = pytest.mark.faults
OLD_SCHEMA = "0123456789abcdef"


def _client():
    from mlflow import MlflowClient

    tracking.setup_mlflow()
    return MlflowClient()


def _batch(env) -> str:
    return storage.write_csv(env.tmp / "batch.csv", env.future.iloc[:BATCH_ROWS])


def _nothing_done(env) -> None:
    assert not env.monitoring.exists()  # no batch, no lease, no state
    assert not env.rendered.exists()  # no notebook run
    assert mlflow_runs() == []  # no monitoring run


def test_missing_champion_alias_stops_the_loop_before_any_work(env):
    _client().delete_registered_model_alias("HealthPredict", "champion")
    started = time.monotonic()
    done = run_cli("loop", "--batch-size", str(BATCH_ROWS), cwd=env.tmp, timeout=120)
    assert done.returncode == 1
    assert "ModelNotFoundError: registered model 'HealthPredict' has no alias 'champion'" in (
        done.stderr
    )
    assert "train a model first: healthpredict train" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    _nothing_done(env)


def test_champion_of_another_schema_stops_the_loop_before_any_work(env):
    version = env.info.version
    _client().set_model_version_tag("HealthPredict", version, "schema_hash", OLD_SCHEMA)
    with pytest.raises(ModelSchemaError) as info:
        local_loop.run_loop(LoopParams(batch_size=BATCH_ROWS, max_batches=1))
    message = str(info.value)
    assert f"model HealthPredict version {version} (models:/HealthPredict@champion)" in message
    assert f"trained on raw schema {OLD_SCHEMA}" in message
    assert f"the current schema is {schema_hash()}" in message
    assert "Retrain it on the current schema" in message
    _nothing_done(env)


def test_monitor_refuses_a_model_of_another_schema_before_its_run(env):
    version = env.info.version
    _client().set_model_version_tag("HealthPredict", version, "schema_hash", OLD_SCHEMA)
    reports = env.tmp / "reports"
    with pytest.raises(ModelSchemaError, match=f"version {version}"):
        monitor(
            MonitorParams(
                new_data_path=str(_batch(env)),
                mlflow_model_uri=f"models:/HealthPredict/{version}",
                evidently_reports_path=str(reports),
            )
        )
    assert mlflow_runs() == [] and not reports.exists()


def test_monitor_notebook_with_a_missing_model_fails_at_its_first_cell(env):
    uri = _batch(env)
    with pytest.raises(runs.NotebookRunError) as info:
        runs.run(MONITOR, {"new_data_path": uri, "mlflow_model_uri": "models:/HealthPredict@gone"})
    assert info.value.ename == "ModelNotFoundError"
    assert "registered model 'HealthPredict' has no alias 'gone'" in info.value.evalue
    (record,) = run_records(env.rendered, MONITOR)
    assert record["status"] == "failed"
    executed = json.loads(Path(record["ipynb"]).read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    failing = next(
        i
        for i, c in enumerate(code)
        if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    )
    # Only the parameters ran before it, and nothing after it.
    assert all(
        any("parameters" in tag for tag in c["metadata"].get("tags", [])) for c in code[:failing]
    )
    assert "monitor(" in "".join(code[failing]["source"])
    assert all(c.get("execution_count") is None for c in code[failing + 1 :])
    # Before any work: no MLflow run, no Evidently report.
    assert mlflow_runs() == []
    assert not (Path(record["run_dir"]) / "reports").exists()
    assert registry.alias_version("HealthPredict", "champion") == env.info.version
