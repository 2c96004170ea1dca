"""A step's labels: what the loop's state will hold once the step succeeds.

Labels arrive late (:mod:`healthpredict.monitoring.labels`): a batch is monitored without its
target, the labels that arrived since the last step are attached, and the step's
:class:`~healthpredict.monitoring.labels.LabelPlan` applies to the state only when the step
succeeded (:func:`healthpredict.pipelines.commit.advance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from healthpredict.core.stages import LoopParams
from healthpredict.monitoring.labels import LabelPlan, plan_labels
from healthpredict.monitoring.state import LoopState

REPLAY = "replay"  # LoopParams.label_source: the loop delivers the stream's own labels


def plan_step_labels(
    state: LoopState,
    step: int,
    batch: Mapping[str, Any],
    params: LoopParams,
    stream: pd.DataFrame | None = None,
    root: str | None = None,
) -> LabelPlan:
    """Deliver (replay), read and attach labels for the step that monitors ``batch``.

    Args:
        state: The loop's state before the step (not modified).
        step: Batches monitored before this one (``state.batches_done``).
        batch: ``batch_uri``, ``start``, ``end`` of the batch monitored now.
        params: The loop's label settings.
        stream: The future stream; the replay delivers its labels when ``label_source`` is
            ``replay`` (required then).
        root: Storage root.

    Raises:
        healthpredict.monitoring.labels.LabelStoreError: An unusable label file, or a conflict.
    """
    replay = params.label_source == REPLAY
    if replay and stream is None:
        raise ValueError("label_source 'replay' needs the stream to deliver its labels")
    monitored = [
        *(b["batch_uri"] for b in state.pending_labels),
        *(b["batch_uri"] for b in state.labelled_batches),
        *(g["batch_uri"] for g in state.label_gaps),
    ]
    return plan_labels(
        batch,
        step,
        state.pending_labels,
        monitored,
        delay=params.label_delay_batches,
        timeout=params.label_timeout_batches,
        replay=stream if replay else None,
        root=root,
    )


def labelled_after(state: LoopState, plan: LabelPlan) -> list[str]:
    """Every labelled batch (``labelled_uri``) once the step's plan applies, in stream order."""
    return [b["labelled_uri"] for b in [*state.labelled_batches, *plan.labelled]]


def new_labelled_after(state: LoopState, plan: LabelPlan) -> list[str]:
    """The labelled batches the champion never learned from, once the step's plan applies."""
    return [*state.new_labelled, *(b["labelled_uri"] for b in plan.labelled)]


def new_labelled_rows(state: LoopState, plan: LabelPlan) -> int:
    """Labelled rows the champion never learned from, once the step's plan applies."""
    new = set(new_labelled_after(state, plan))
    entries = [*state.labelled_batches, *plan.labelled]
    return sum(int(b["labelled_rows"]) for b in entries if b["labelled_uri"] in new)
