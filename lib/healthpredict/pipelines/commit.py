"""The loop's only step forward: the cursor moves, and a promotion is written ahead.

:func:`commit_step` ends a monitoring step (``healthpredict loop`` and the monitoring DAG's
``advance_state``). When the step's retraining promoted a challenger whose alias is not moved
yet, the promotion is write-ahead: the state the step leads to is saved together with the
intent (batch, challenger, previous champion, and the state before the step), then the alias
moves, then the intent is cleared. A runner that finds an intent (its predecessor died in
between) finishes it with :func:`resume_promotion` before it monitors anything, or rolls the
step back when the challenger is gone. Moving an alias to where it points already changes
nothing, so a finished step is never done twice: one decision per batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import CHAMPION
from healthpredict.core.settings import get_settings
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import registry
from healthpredict.modeling.runtime.model_meta import ModelNotFoundError
from healthpredict.monitoring.labels import LabelPlan
from healthpredict.monitoring.lease import Lease
from healthpredict.monitoring.state import LoopState
from healthpredict.pipelines.step_labels import new_labelled_after

if TYPE_CHECKING:
    from healthpredict.pipelines.monitoring_step import BatchOutcome

log = logging.getLogger(__name__)


def write_reference(batch_uris: list[str], name: str, root: str | None = None) -> str:
    """Concatenate batches into a new drift reference (the data a new champion learned from)."""
    frame = pd.concat([read_raw_csv(u) for u in batch_uris], ignore_index=True)
    return storage.write_csv(layout.reference_csv(name, root), frame)


def advance(
    state: LoopState,
    outcome: BatchOutcome,
    plan: LabelPlan,
    *,
    root: str | None = None,
    **record: object,
) -> dict:
    """Move the cursor past ``outcome``'s batch and save the state: the loop's only step forward.

    Called once every step for the batch succeeded. The step's labels apply (pending,
    labelled, gaps, unknown labels). After a promotion the labelled batches the new champion
    learned from become the drift reference and are no longer new, and the gate's holdout
    becomes the prediction reference; after a rejection the holdout becomes the kept
    champion's prediction reference.

    Args:
        state: State to update (in place) and save.
        outcome: The batch's outcome; ``outcome.retrain`` holds the retraining summary, if any
            (with ``retraining_data_path``, the batches it learned from).
        plan: The step's labels (:func:`plan_step_labels`).
        root: Storage root.
        **record: Extra fields for the history entry (the DAG adds its run id).

    Returns:
        The history entry appended.
    """
    state.new_labelled = new_labelled_after(state, plan)
    state.pending_labels = list(plan.pending)
    state.labelled_batches = [*state.labelled_batches, *plan.labelled]
    state.label_gaps = [*state.label_gaps, *plan.gaps]
    state.unknown_labels = plan.unknown
    retrain = outcome.retrain or {}
    if retrain.get("promoted"):
        learned = list(retrain.get("retraining_data_path") or [])
        if learned:
            name = f"reference_{outcome.window.start:07d}"
            state.reference_uri = write_reference(learned, name, root)
        state.model_reference_uri = retrain.get("holdout_path") or None
        state.new_labelled = [u for u in state.new_labelled if u not in set(learned)]
    elif retrain.get("holdout_path"):
        # Rejected: the kept champion was just judged on recent rows it never saw; they become
        # its prediction reference (a re-baseline), or a stream harder than the reference period
        # keeps the drop triggers firing after every batch although no challenger did better.
        state.model_reference_uri = retrain["holdout_path"]
    entry = {**outcome.as_dict(), **record}
    state.next_batch_start_index = outcome.window.end
    state.history.append(entry)
    state.save(root)
    return entry


def commit_step(
    state: LoopState,
    outcome: BatchOutcome,
    plan: LabelPlan,
    *,
    root: str | None = None,
    held: Lease | None = None,
    **record: object,
) -> dict:
    """Advance past ``outcome``'s batch and, when its retraining promoted, move the alias.

    The lease (``held``) is checked to still be ours before every write: the state and the
    alias.

    Args:
        state: State to update (in place) and save.
        outcome: The batch's outcome (``outcome.retrain``: the retraining's summary, if any,
            with the registered model's name).
        plan: The step's labels.
        root: Storage root.
        held: The loop's lease, when the caller holds one.
        **record: Extra fields for the history entry.

    Returns:
        The history entry appended.

    Raises:
        healthpredict.monitoring.lease.LoopLockedError: The lease is no longer ours (nothing
            more is written).
    """
    retrain = outcome.retrain or {}
    pending = retrain.get("promoted") and not retrain.get("alias_moved")
    _check(held)
    if not pending:
        return advance(state, outcome, plan, root=root, **record)
    state.promotion = {
        "batch_start": outcome.window.start,
        "model_name": retrain.get("model_name") or get_settings().model_name,
        "challenger_version": str(retrain["challenger_version"]),
        "previous_champion": retrain.get("champion_version"),
        "rollback": state.snapshot(),
    }
    entry = advance(state, outcome, plan, root=root, **record)
    finish_promotion(state, root=root, held=held)
    return entry


def finish_promotion(state: LoopState, *, root: str | None = None, held: Lease | None = None):
    """Move the champion alias the state's intent names, then clear the intent."""
    intent = state.promotion
    _check(held)
    registry.promote(intent["model_name"], intent["challenger_version"])
    state.promotion = None
    _check(held)
    state.save(root)


def resume_promotion(
    state: LoopState, *, root: str | None = None, held: Lease | None = None
) -> str | None:
    """Finish (or roll back) a promotion a dead runner recorded; says what it did, if anything.

    With its challenger still registered, the promotion is finished: the state already holds
    the step's outcome. With the challenger gone (deleted by hand), the alias returns to the
    previous champion and the state to the one before the step, whose batch is then monitored
    again.
    """
    intent = state.promotion
    if not intent:
        return None
    name, version = intent["model_name"], intent["challenger_version"]
    where = f"batch at row {intent['batch_start']}"
    try:
        registry.get_model_info(f"models:/{name}/{version}")
    except ModelNotFoundError:
        _check(held)
        previous = intent.get("previous_champion")
        if previous and registry.alias_version(name, CHAMPION) != str(previous):
            registry.promote(name, previous)
        state.restore(intent["rollback"])
        _check(held)
        state.save(root)
        message = (
            f"rolled back the promotion of {name} v{version} ({where}) a stopped runner had "
            f"recorded: the version is gone; champion v{previous}, the batch is monitored again"
        )
    else:
        finish_promotion(state, root=root, held=held)
        message = (
            f"finished the promotion of {name} v{version} ({where}) a stopped runner had "
            "recorded before moving the champion alias"
        )
    log.warning("%s", message)
    return message


def _check(held: Lease | None) -> None:
    if held is not None:
        held.renew()  # still ours? otherwise another runner owns the cursor now
