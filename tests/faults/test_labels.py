"""Late labels joined by encounter id: unknown, conflicting, repeated, missing and partial labels.

Each step here is the monitoring step's label part with the real functions on real storage
(local files, and S3 through moto's server for the round trip): the batch is cut without its
target, labels are delivered (the replay) or written by hand (``label_source="external"``),
attached, decided on from monitor scraps, and the state advanced. Only the notebook run is
left out (its scraps are given), so each fault is checked in a second, not a kernel start.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pandas as pd
import pytest

from healthpredict.core import layout, storage
from healthpredict.core.stages import LoopParams
from healthpredict.data import synthetic
from healthpredict.data.schema import TARGET
from healthpredict.monitoring.labels import (
    LabelConflictError,
    LabelStoreError,
    read_label_store,
    set_aside,
)
from healthpredict.monitoring.state import LoopState, next_window, write_batch
from healthpredict.pipelines.commit import advance
from healthpredict.pipelines.monitoring_step import decide, monitor_parameters, outcome_of
from healthpredict.pipelines.step_labels import (
    labelled_after,
    new_labelled_after,
    plan_step_labels,
)

pytestmark = pytest.mark.faults
B = 40  # rows per batch
ROWS = 6 * B
RETRAIN_SCRAPS = {
    "drift_status": "NO_DRIFT",
    "drifted_share": 0.0,
    "retrain": True,
    "retrain_triggers": ["data_growth"],
    "retrain_reasons": ["many new labelled rows"],
}


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return synthetic.generate(ROWS, seed=7)


def step(root: str, stream: pd.DataFrame, params: LoopParams, crash: str | None = None) -> dict:
    """One batch through the step's label machinery and :func:`advance`; returns the entry.

    ``crash="raise"`` fails after the labels were planned (the monitor failing); ``"kill"``
    kills this process there (the runner dying).
    """
    state = LoopState.load(root)
    window = next_window(state.next_batch_start_index, len(stream), params.batch_size)
    batch = {
        "batch_uri": write_batch(stream, window, root),
        "start": window.start,
        "end": window.end,
    }
    replay = stream if params.label_source == "replay" else None
    plan = plan_step_labels(state, state.batches_done, batch, params, replay, root)
    monitor_parameters(state, batch["batch_uri"], "/ref.csv", plan)  # what the monitor gets
    if crash == "raise":
        raise RuntimeError("the monitor failed")
    if crash == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    decision = decide(
        {**RETRAIN_SCRAPS, "retrain": False},
        "/runs/monitor",
        labelled_after(state, plan),
        new_labelled_after(state, plan),
    )
    return advance(
        state, outcome_of(window, batch["batch_uri"], decision.as_dict(), plan), plan, root=root
    )


def retrained_step(state, root, stream, params, *, promoted, learned_all_but_last=False):
    """One step whose monitor asked to retrain and whose retraining ended as told; its decision."""
    window = next_window(state.next_batch_start_index, len(stream), B)
    batch = {
        "batch_uri": write_batch(stream, window, root),
        "start": window.start,
        "end": window.end,
    }
    plan = plan_step_labels(state, state.batches_done, batch, params, stream, root)
    decision = decide(
        RETRAIN_SCRAPS, "/runs/m", labelled_after(state, plan), new_labelled_after(state, plan)
    )
    learned = decision.retraining_data[:-1] if learned_all_but_last else decision.retraining_data
    retrain = {
        "decision": "PROMOTED" if promoted else "REJECTED",
        "promoted": promoted,
        "holdout_path": "/holdout.csv",
        "retraining_data_path": learned,
    }
    advance(
        state,
        outcome_of(window, batch["batch_uri"], decision.as_dict(), plan, retrain),
        plan,
        root=root,
    )
    return decision


def external(**changes) -> LoopParams:
    return LoopParams(batch_size=B, label_source="external", **changes)


def write_labels(root: str, name: str, frame: pd.DataFrame) -> str:
    return storage.write_csv(layout.label_csv(name, root), frame[["encounter_id", TARGET]])


def rows(stream: pd.DataFrame, batch: int) -> pd.DataFrame:
    return stream.iloc[batch * B : (batch + 1) * B]


def test_replay_delivers_labels_one_batch_late(tmp_path, stream):
    root = str(tmp_path)
    params = LoopParams(batch_size=B)  # replay, delay 1
    first = step(root, stream, params)
    batch = storage.read_csv(first["batch_uri"])
    assert TARGET not in batch.columns and len(batch) == B  # monitored without its labels
    assert first["labels"]["labelled"] == [] and first["labels"]["pending"] == 1
    second = step(root, stream, params)
    (labelled,) = second["labels"]["labelled"]
    assert second["labels"]["delivered"] == [layout.label_csv("labels_0000000.csv", root)]
    frame = storage.read_csv(labelled, keep_default_na=False)
    assert frame["encounter_id"].tolist() == rows(stream, 0)["encounter_id"].tolist()
    assert frame[TARGET].tolist() == rows(stream, 0)[TARGET].tolist()
    state = LoopState.load(root)
    assert state.new_labelled == [labelled] and len(state.pending_labels) == 1
    assert state.labelled_batches[0]["labelled_rows"] == B and state.unknown_labels is None
    params0 = monitor_parameters(state, "/next.csv", "/ref.csv")
    # The champion's labelled batches go to the monitor until it learns from them.
    assert params0["new_labelled_rows"] == B and params0["labelled_data_path"] == [labelled]


def test_labels_with_the_batch_when_the_delay_is_zero(tmp_path, stream):
    entry = step(str(tmp_path), stream, LoopParams(batch_size=B, label_delay_batches=0))
    assert entry["labels"]["labelled_rows"] == B and entry["labels"]["pending"] == 0


def test_unknown_encounters_are_a_visible_gap(tmp_path, stream):
    root = str(tmp_path)
    strangers = pd.DataFrame({"encounter_id": [999_999_001, 999_999_002], TARGET: ["NO", "<30"]})
    path = write_labels(root, "from_elsewhere.csv", strangers)
    write_labels(root, "hospital_0.csv", rows(stream, 0))
    entry = step(root, stream, external(label_delay_batches=0))
    assert entry["labels"]["labelled_rows"] == B  # the known labels were used
    expected = {"count": 2, "example_encounter_id": 999_999_001, "files": [path]}
    assert entry["labels"]["unknown"] == expected
    assert LoopState.load(root).unknown_labels == expected
    # The labels of the next batch, delivered before it was monitored, count as unknown until
    # it is: then they are attached and the count drops.
    write_labels(root, "hospital_1.csv", rows(stream, 1))
    assert LoopState.load(root).unknown_labels["count"] == 2
    entry = step(root, stream, external(label_delay_batches=0))
    assert entry["labels"]["labelled_rows"] == B and entry["labels"]["unknown"]["count"] == 2


def test_conflicting_labels_stop_the_step_and_name_encounters_and_files(tmp_path, stream):
    root = str(tmp_path)
    params = external(label_delay_batches=0)
    step(root, stream, params)  # batch 0: no labels yet, pending
    before = storage.read_bytes(layout.loop_state(root))
    first = rows(stream, 1)
    a = write_labels(root, "a.csv", first)
    flipped = first.iloc[:3].assign(
        **{TARGET: ["<30" if v == "NO" else "NO" for v in first[TARGET].iloc[:3]]}
    )
    b = write_labels(root, "b.csv", flipped)
    with pytest.raises(LabelConflictError) as info:
        step(root, stream, params)
    message = str(info.value)
    ids = first["encounter_id"].iloc[:3].tolist()
    assert message.startswith("3 encounter(s) labelled twice with different values")
    assert all(str(i) in message for i in ids) and a in message and b in message
    assert "nothing was attached and the loop state did not move" in message
    assert storage.read_bytes(layout.loop_state(root)) == before
    assert not storage.list_uris(storage.join(layout.monitoring_dir(root), "labelled"))
    # Once the wrong file is removed, the same step goes through.
    storage.delete(b)
    assert step(root, stream, params)["labels"]["labelled_rows"] == B


def test_the_same_label_twice_is_harmless(tmp_path, stream):
    root = str(tmp_path)
    write_labels(root, "first.csv", rows(stream, 0))
    write_labels(root, "again.csv", rows(stream, 0).iloc[:10])  # a resent part, same values
    entry = step(root, stream, external(label_delay_batches=0))
    assert entry["labels"]["labelled_rows"] == B and entry["labels"]["gaps"] == []
    assert len(read_label_store(root)) == B


def test_unusable_label_files_are_named(tmp_path, stream):
    root = str(tmp_path)
    bad = storage.write_csv(layout.label_csv("bad.csv", root), pd.DataFrame({"id": [1]}))
    with pytest.raises(LabelStoreError, match=f"label file {bad} lacks the column"):
        read_label_store(root)
    storage.write_csv(bad, pd.DataFrame({"encounter_id": ["x", "7"], TARGET: ["NO", "maybe"]}))
    with pytest.raises(LabelStoreError, match=r"1 row\(s\) without an integer encounter_id and 1"):
        read_label_store(root)


def test_labels_that_never_arrive_become_a_gap_after_the_timeout(tmp_path, stream):
    root = str(tmp_path)
    params = external(label_delay_batches=1, label_timeout_batches=2)
    for _ in range(3):  # batch 0 is due at step 1; still waiting at steps 1 and 2
        entry = step(root, stream, params)
        assert entry["labels"]["gaps"] == []
    entry = step(root, stream, params)  # step 3 = due + timeout
    (gap,) = entry["labels"]["gaps"]
    assert gap["kind"] == "never_arrived" and gap["start"] == 0
    assert gap["missing_rows"] == B and gap["labelled_rows"] == 0
    assert gap["missing_encounter_id"] == int(stream["encounter_id"].iloc[0])
    state = LoopState.load(root)
    assert state.label_gaps == [gap] and state.labelled_batches == [] and state.new_labelled == []
    assert [p["start"] for p in state.pending_labels] == [B, 2 * B, 3 * B]
    # Excluded from training: the monitor's request to retrain is not followed.
    decision = decide(RETRAIN_SCRAPS, "/runs/m", labelled_after(state, _empty()), [])
    assert not decision.retrain and "no labelled rows yet" in decision.skipped


def _empty():
    from healthpredict.monitoring.labels import LabelPlan

    return LabelPlan()


def test_a_partial_batch_waits_then_uses_its_labelled_part(tmp_path, stream):
    root = str(tmp_path)
    params = external(label_delay_batches=0, label_timeout_batches=1)
    write_labels(root, "part.csv", rows(stream, 0).iloc[:30])
    entry = step(root, stream, params)  # due now, 10 labels missing: waits
    assert entry["labels"]["labelled"] == [] and entry["labels"]["pending"] == 1
    entry = step(root, stream, params)  # timeout reached
    (gap,) = entry["labels"]["gaps"]
    assert (gap["kind"], gap["labelled_rows"], gap["missing_rows"]) == ("partial", 30, 10)
    assert gap["missing_encounter_id"] == int(stream["encounter_id"].iloc[30])
    (uri,) = entry["labels"]["labelled"]
    assert len(storage.read_csv(uri)) == 30
    state = LoopState.load(root)
    assert state.new_labelled == [uri] and state.labelled_batches[0]["missing_rows"] == 10
    decision = decide(RETRAIN_SCRAPS, "/runs/m", [uri], state.new_labelled)
    assert decision.retrain and decision.retraining_data == [uri] == decision.gate_data


def test_retraining_learns_from_all_labelled_batches_and_a_promotion_consumes_them(
    tmp_path, stream
):
    root = str(tmp_path)
    params = LoopParams(batch_size=B, label_delay_batches=0)
    for _ in range(3):
        step(root, stream, params)
    state = LoopState.load(root)
    labelled = [b["labelled_uri"] for b in state.labelled_batches]
    decision = decide(RETRAIN_SCRAPS, "/runs/m", labelled, state.new_labelled)
    assert decision.retraining_data == labelled == decision.gate_data  # cumulative
    assert decide(RETRAIN_SCRAPS, "/runs/m", labelled, labelled, 2).retraining_data == labelled[1:]
    # The next step retrains and promotes: its batches are no longer new.
    decision = retrained_step(state, root, stream, params, promoted=True, learned_all_but_last=True)
    state = LoopState.load(root)
    assert state.new_labelled == [decision.retraining_data[-1]]
    assert len(storage.read_csv(state.reference_uri)) == 3 * B
    assert state.model_reference_uri == "/holdout.csv"
    assert monitor_parameters(state, "/b.csv", "/ref.csv")["new_labelled_rows"] == B


def test_a_monitor_without_the_retrain_scrap_is_an_error():
    scraps = {k: v for k, v in RETRAIN_SCRAPS.items() if k != "retrain"}
    with pytest.raises(ValueError, match="left no 'retrain' scrap"):
        decide(scraps, "/runs/m", [], [])
    with pytest.raises(ValueError, match="'retrain_triggers' scrap is 'x', not a list"):
        decide({**RETRAIN_SCRAPS, "retrain_triggers": "x"}, "/runs/m", [], [])


def _run_steps(root: str, stream: pd.DataFrame, crash_at: int | None, crash: str) -> None:
    params = LoopParams(batch_size=B)
    for i in range(4):
        step(root, stream, params, crash if i == crash_at else None)


@pytest.mark.parametrize("crash", ["raise", "kill"])
def test_a_step_that_dies_after_attaching_labels_is_redone_to_the_same_state(
    tmp_path, stream, crash
):
    clean, broken = str(tmp_path / "clean"), str(tmp_path / "broken")
    _run_steps(clean, stream, None, crash)
    if crash == "raise":
        with pytest.raises(RuntimeError, match="the monitor failed"):
            _run_steps(broken, stream, 2, crash)
    else:
        child = mp.get_context("spawn").Process(target=_run_steps, args=(broken, stream, 2, crash))
        child.start()
        child.join(120)
        assert child.exitcode == -signal.SIGKILL
    # Half-way: batch 1's labels were delivered and attached, the state did not record them.
    state = LoopState.load(broken)
    assert state.next_batch_start_index == 2 * B and len(state.new_labelled) == 1
    assert storage.exists(layout.labelled_csv(f"labelled_{B:07d}.csv", broken))
    for _ in range(2):  # run again: steps 2 and 3
        step(broken, stream, LoopParams(batch_size=B))
    want, got = LoopState.load(clean), LoopState.load(broken)
    assert [e["labels"]["labelled_rows"] for e in got.history] == [0, B, B, B]
    assert _relative(got, broken) == _relative(want, clean)
    for name in (f"labelled_{0:07d}.csv", f"labelled_{2 * B:07d}.csv"):
        assert storage.read_bytes(layout.labelled_csv(name, broken)) == storage.read_bytes(
            layout.labelled_csv(name, clean)
        )


def _relative(state: LoopState, root: str) -> str:
    """The state as text with its storage root taken out, to compare two roots."""
    import json

    return json.dumps(state.__dict__, sort_keys=True).replace(root, "<root>")


def test_old_state_files_load_with_label_defaults(tmp_path):
    root = str(tmp_path)
    old = {
        "next_batch_start_index": 4000,
        "batches_since_retrain": ["/b/batch_0002000.csv"],
        "reference_uri": None,
        "model_reference_uri": None,
        "history": [{"start": 0}, {"start": 2000}],
    }
    storage.write_json(layout.loop_state(root), old)
    state = LoopState.load(root)
    assert state.next_batch_start_index == 4000 and state.batches_done == 2
    assert state.pending_labels == [] and state.labelled_batches == [] and state.new_labelled == []
    assert state.label_gaps == [] and state.unknown_labels is None


def test_label_store_round_trip_on_s3(s3_bucket, stream):
    entry = step(s3_bucket, stream, LoopParams(batch_size=B, label_delay_batches=0))
    (uri,) = entry["labels"]["labelled"]
    assert uri.startswith(s3_bucket) and len(storage.read_csv(uri)) == B
    assert LoopState.load(s3_bucket).new_labelled == [uri]


def test_a_restarted_stream_sets_the_old_labels_aside(tmp_path, stream):
    root = str(tmp_path)
    step(root, stream, LoopParams(batch_size=B, label_delay_batches=0))
    moved = set_aside("t1", root)
    assert sorted(p.rsplit("/", 2)[-2] for p in moved) == ["labelled", "labels"]
    assert all("/monitoring/set-aside-t1/" in p for p in moved)
    assert read_label_store(root).empty


def test_a_rejection_rebaselines_the_kept_champion_on_its_gate_rows(tmp_path, stream):
    root = str(tmp_path)
    params = LoopParams(batch_size=B, label_delay_batches=0)
    step(root, stream, params)
    state = LoopState.load(root)
    decision = retrained_step(state, root, stream, params, promoted=False)
    state = LoopState.load(root)
    # The drift reference and the new batches stay; the kept champion's yardstick is the gate rows.
    assert state.reference_uri is None and state.new_labelled == decision.retraining_data
    assert state.model_reference_uri == "/holdout.csv"
    assert monitor_parameters(state, "/b.csv", "/ref.csv")["model_reference_path"] == "/holdout.csv"
