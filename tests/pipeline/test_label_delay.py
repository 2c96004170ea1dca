"""`healthpredict loop` with late labels, end to end: real notebooks, real MLflow, real storage.

Three batches of a synthetic stream, labels one batch late (the replay): the monitor sees each
batch without its target and the batches labelled since the last step with theirs; a retraining
learns from labelled batches only, and its gate from those the champion never learned from. The
growth trigger is set to 0 so that the monitor asks for a retraining at every batch: at the
first, with no labels yet, the loop declines and says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healthpredict.core import layout, storage
from healthpredict.core.stages import LoopParams
from healthpredict.data.schema import TARGET
from healthpredict.runs.record import resolve_record

pytestmark = pytest.mark.slow
BATCH = 500


def _run_json(run_dir: str) -> dict:
    return resolve_record(json.loads((Path(run_dir) / "run.json").read_text()))


def test_loop_monitors_without_labels_and_learns_them_one_batch_late(hp_env, synthetic_champion):
    from mlflow import MlflowClient

    from healthpredict.monitoring.state import LoopState
    from healthpredict.pipelines import local_loop

    made = synthetic_champion(6000)
    # What registry.log_model records for a trained model (the fixture's champion predates it):
    # the growth trigger compares new labelled rows with it.
    MlflowClient().set_model_version_tag(
        made.info.name, made.info.version, "train_rows", str(len(made.train))
    )
    outcomes = local_loop.run_loop(
        LoopParams(batch_size=BATCH, max_batches=3),
        local_loop.LoopOptions(
            monitor_params={"growth_trigger": 0.0}, retrain_params={"n_trials": 1}
        ),
    )
    assert [o.window.start for o in outcomes] == [0, BATCH, 2 * BATCH]
    state = LoopState.load()
    labelled = [layout.labelled_csv(f"labelled_{s:07d}.csv") for s in (0, BATCH)]
    assert [b["labelled_uri"] for b in state.labelled_batches] == labelled
    assert [p["start"] for p in state.pending_labels] == [2 * BATCH]
    assert state.label_gaps == [] and state.unknown_labels is None

    given = [_run_json(h["monitor_run_dir"])["given_parameters"] for h in state.history]
    for entry, params in zip(state.history, given, strict=True):
        batch = storage.read_csv(entry["batch_uri"])
        assert TARGET not in batch.columns and len(batch) == BATCH  # monitored unlabelled
        assert params["new_data_path"] == entry["batch_uri"]
    # Batch t's labels reach the monitor at step t + 1; it gets the champion's labelled batches.
    assert given[0]["labelled_data_path"] is None
    for uri in labelled:
        frame = storage.read_csv(uri, keep_default_na=False)
        assert len(frame) == BATCH and frame[TARGET].isin(["NO", "<30", ">30"]).all()

    # The first batch: asked, declined (nothing labelled); then retrained on labelled rows only.
    first, *later = state.history
    assert first["retrain"] is None and "no labelled rows yet" in first["retrain_skipped"]
    assert first["retrain_triggers"] == ["data_growth"]
    learned: set[str] = set()
    for step, entry in enumerate(later, start=1):
        available = labelled[:step]
        new = [u for u in available if u not in learned]
        assert given[step]["new_labelled_rows"] == BATCH * len(new)
        assert given[step]["labelled_data_path"] == new
        assert entry["retrain"] and entry["retrain_skipped"] is None
        retrain = _run_json(entry["retrain"]["run_dir"])["given_parameters"]
        assert retrain["retraining_data_path"] == available
        assert retrain["gate_data_path"] == new
        if entry["retrain"]["promoted"]:
            learned |= set(available)
    assert state.new_labelled == [u for u in labelled if u not in learned]
    if learned:  # the drift reference is the labelled data the new champion learned from
        assert len(storage.read_csv(state.reference_uri)) == BATCH * len(
            [u for u in labelled if u in learned]
        )
