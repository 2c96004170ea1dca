"""`healthpredict monitor`: the notebook run end to end, status as the last line of stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from drift_helpers import write_batch

from healthpredict.runs.record import resolve_record
from tests.support import drift_scenarios

pytestmark = pytest.mark.slow
STATUSES = {"DRIFT_DETECTED", "NO_DRIFT"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "healthpredict.cli", "monitor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _monitoring_runs():
    from mlflow import MlflowClient

    from healthpredict.mlops import tracking

    tracking.setup_mlflow()
    exp = MlflowClient().get_experiment_by_name("HealthPredict_Monitoring")
    return [] if exp is None else MlflowClient().search_runs([exp.experiment_id])


def test_monitor_prints_the_status_last(drift_env):
    write_batch(drift_env, "cli_clean", drift_env.clean_batch)
    # A relative path: the kernel runs elsewhere, so the CLI must make it absolute.
    done = _cli("--batch", "batches/cli_clean.csv", cwd=drift_env.tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] in STATUSES
    run_dir = Path(lines[-2])
    prov = resolve_record(json.loads((run_dir / "run.json").read_text()))
    assert prov["status"] == "succeeded" and prov["notebook"] == "03_drift_monitor"
    scraps = prov["scraps"]
    assert scraps["drift_status"] == lines[-1] and scraps["data_source"] == "synthetic"
    assert scraps["model_version"] == drift_env.info.version and "performance" in scraps
    for path in scraps["report_paths"].values():
        assert Path(path).parent == run_dir / "reports" and Path(path).stat().st_size > 50_000
    assert (run_dir / "03_drift_monitor.html").stat().st_size > 10_000
    runs = {r.info.run_id: r for r in _monitoring_runs()}
    assert runs[scraps["mlflow_run_id"]].info.status == "FINISHED"
    assert runs[scraps["mlflow_run_id"]].data.tags["drift_status"] == lines[-1]
    # The run's params name files portably (the batch was kept outside the storage: as given).
    params = runs[scraps["mlflow_run_id"]].data.params
    assert params["reference_data_path"] == "<storage>/processed_data/initial_train.csv"
    assert params["new_data_path"] == str(drift_env.tmp / "batches" / "cli_clean.csv")


def test_bad_batch_fails_the_run_with_every_problem(drift_env):
    broken = drift_scenarios.apply("rename_column", drift_env.clean_batch)
    broken = drift_scenarios.apply("wrong_type", broken, strength=0.1)
    uri = write_batch(drift_env, "cli_broken", broken)
    before = {r.info.run_id for r in _monitoring_runs()}
    done = _cli("--batch", uri, cwd=drift_env.tmp)
    assert done.returncode == 1
    assert not set(done.stdout.strip().splitlines()[-1:]) & STATUSES
    for problem in ("glyburide-metformin", "glyburide_metformin", "num_medications"):
        assert problem in done.stderr
    failed = [
        json.loads(p.read_text())
        for p in (drift_env.tmp / "rendered").glob("*/run.json")
        if json.loads(p.read_text())["status"] == "failed"
    ]
    assert len(failed) == 1 and failed[0]["error"]["ename"] == "RawSchemaError"
    assert "num_medications" in failed[0]["error"]["evalue"]
    new = [r for r in _monitoring_runs() if r.info.run_id not in before]
    assert not [r for r in new if r.info.status == "FINISHED"]
