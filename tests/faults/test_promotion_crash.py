"""A runner killed at every boundary of a promoting step: the next one ends where one run ends.

A step that promotes is monitor -> retrain -> record the promotion with the state it leads to
-> move the champion alias -> clear the record. ``kill_at.py`` runs the loop's real code in a
child process that SIGKILLs itself right after one of these returns; a second runner then
finishes the stream. Its final state, champion and MLflow runs must equal those of a run that
was never interrupted: one decision for the batch, one MLflow run per step, the same champion.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fault_helpers import MONITOR, RETRAIN, aliases, cli_env, mlflow_runs, run_records

from healthpredict.core.settings import get_settings
from healthpredict.mlops import tracking
from healthpredict.monitoring.state import LoopState

pytestmark = pytest.mark.faults
KILL_AT = Path(__file__).with_name("kill_at.py")
LEASE_SECONDS = 6
STREAM_ROWS = 1000
BOUNDARIES = ["monitored", "retrained", "intent_saved", "alias_moved", "intent_cleared"]


def _world(champion, folder: Path, drift_cache: Path | None = None) -> dict[str, str]:
    """A fresh copy of the fault suite's champion world in ``folder``; its settings.

    Its stream is one batch of ``STREAM_ROWS``: a retraining on it learns from clearly more rows
    than the champion (~4,100 vs ~3,400), so a lenient margin promotes it. ``drift_cache``: a
    warm cache for that batch size (the first world's, once its run calibrated it).
    """
    var = folder / "var"
    shutil.copytree(champion.storage / "processed_data", var / "processed_data")
    shutil.copytree(drift_cache or champion.storage / "drift_cache", var / "drift_cache")
    shutil.copy(champion.db, folder / "mlflow.db")
    future = var / "processed_data" / "future_data.csv"
    header_and_rows = future.read_text().splitlines(keepends=True)[: STREAM_ROWS + 1]
    future.write_text("".join(header_and_rows))  # as text: "None" stays a value, not a NaN
    return {
        "HP_STORAGE": str(var),
        "HP_MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "HP_RENDERED_DIR": str(folder / "rendered"),
        "HP_UCI_SOURCE": "synthetic",
        "HP_LOOP_LEASE_SECONDS": str(LEASE_SECONDS),
    }


def _use(monkeypatch, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name in ("MLFLOW_TRACKING_URI", "HP_LOOP_HOLDER"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    tracking.setup_mlflow()  # MLflow's global tracking URI: this world's store, not the last one


def _loop(settings: dict[str, str], boundary: str, batch_rows: int, cwd: Path):
    env = cli_env(**settings)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(KILL_AT), boundary, str(batch_rows)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _summary(settings: dict[str, str]) -> dict:
    """What the loop left: decisions, champion, MLflow runs and notebook runs, machine-neutral."""
    state = LoopState.load()
    rendered = Path(settings["HP_RENDERED_DIR"])
    runs = {  # (status, nested run: a search trial)
        experiment: sorted(
            (r.info.status, "mlflow.parentRunId" in r.data.tags) for r in mlflow_runs(experiment)
        )
        for experiment in ("HealthPredict_Monitoring", "HealthPredict_Retraining")
    }
    return {
        "cursor": state.next_batch_start_index,
        "decisions": [
            (
                h["start"],
                h["end"],
                h["drift_status"],
                h["retrain"] and (h["retrain"]["decision"], h["retrain"]["challenger_version"]),
            )
            for h in state.history
        ],
        "promotion": state.promotion,
        "reference": state.reference_uri and Path(state.reference_uri).name,
        "model_reference": state.model_reference_uri is not None,
        "new_labelled": state.new_labelled,
        "aliases": aliases(),
        "mlflow_runs": runs,
        "notebook_runs": {
            nb: sorted(r["status"] for r in run_records(rendered, nb)) for nb in (MONITOR, RETRAIN)
        },
    }


@pytest.fixture(scope="module")
def uninterrupted(champion, tmp_path_factory):
    """The summary of the same stream done by one runner that nobody killed."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    settings = _world(champion, folder)
    done = _loop(settings, "none", STREAM_ROWS, folder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        _use(patch, settings)
        summary = _summary(settings)
    get_settings.cache_clear()
    return SimpleNamespace(summary=summary, drift_cache=folder / "var" / "drift_cache")


def test_the_uninterrupted_run_promotes_once(uninterrupted):
    """The scenario is what the kill tests need: one batch, retrained, promoted."""
    summary = uninterrupted.summary
    (decision,) = summary["decisions"]
    assert decision[3] == ("PROMOTED", "2")
    assert summary["aliases"] == {"champion": "2", "previous": "1", "#": "2"}
    assert summary["promotion"] is None and summary["new_labelled"] == []
    assert summary["mlflow_runs"] == {
        "HealthPredict_Monitoring": [("FINISHED", False)],
        "HealthPredict_Retraining": [("FINISHED", False), ("FINISHED", True)],  # run, 1 trial
    }
    assert summary["notebook_runs"] == {MONITOR: ["succeeded"], RETRAIN: ["succeeded"]}


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_killed_at_a_boundary_the_next_runner_ends_as_one_run(
    boundary, champion, uninterrupted, tmp_path, monkeypatch
):
    settings = _world(champion, tmp_path, uninterrupted.drift_cache)
    _use(monkeypatch, settings)

    killed = _loop(settings, boundary, STREAM_ROWS, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]

    # What the kill left: the batch not done, or done with its promotion recorded ahead.
    state = LoopState.load()
    intent = state.promotion
    if boundary in ("monitored", "retrained"):
        assert state.history == [] and intent is None
        assert aliases()["champion"] == "1"  # the retraining left the alias to the loop
    else:
        assert [h["start"] for h in state.history] == [
            0
        ] and state.next_batch_start_index == STREAM_ROWS
    if boundary in ("intent_saved", "alias_moved"):
        assert intent["challenger_version"] == "2" and intent["previous_champion"] == "1"
        assert intent["rollback"]["next_batch_start_index"] == 0
        assert aliases()["champion"] == ("1" if boundary == "intent_saved" else "2")
    if boundary == "intent_cleared":
        assert intent is None and aliases()["champion"] == "2"

    time.sleep(LEASE_SECONDS + 0.5)  # the dead runner's lease expires
    resumed = _loop(settings, "none", STREAM_ROWS, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    if intent is not None:
        assert "finished the promotion of HealthPredict v2" in resumed.stderr
    assert _summary(settings) == uninterrupted.summary


def test_a_recorded_promotion_whose_challenger_is_gone_is_rolled_back(
    champion, uninterrupted, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    settings = _world(champion, tmp_path, uninterrupted.drift_cache)
    _use(monkeypatch, settings)

    killed = _loop(settings, "intent_saved", STREAM_ROWS, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = LoopState.load().promotion["rollback"]
    MlflowClient().delete_model_version("HealthPredict", "2")  # somebody removed the challenger

    time.sleep(LEASE_SECONDS + 0.5)
    resumed = _loop(settings, "none", STREAM_ROWS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "rolled back the promotion of HealthPredict v2" in resumed.stderr
    state = LoopState.load()
    # The batch was monitored again, against the champion it had, and decided once.
    assert before["next_batch_start_index"] == 0 and [h["start"] for h in state.history] == [0]
    assert state.promotion is None
    assert aliases()["champion"] == state.history[0]["retrain"]["challenger_version"]
