"""The monitoring loop's cursor in storage and the batches it cuts from the future stream.

The cursor (``next_batch_start_index``) lives in ``<storage>/monitoring/state.json`` and moves
forward only after a batch was monitored (and, on drift, retrained) successfully, so a failed
or killed run processes the same batch again. Batch files are named by their start index, so
a re-run overwrites instead of duplicating. Batches are written without their target
(``readmitted``): labels arrive later, into the label store (:mod:`healthpredict.monitoring.labels`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import MIN_BATCH_ROWS
from healthpredict.data.schema import TARGET


class LoopStateError(ValueError):
    """The loop's ``state.json`` cannot be read; the message says how to recover."""


@dataclass(frozen=True)
class BatchWindow:
    """Rows ``[start, end)`` of the future stream."""

    start: int
    end: int

    @property
    def name(self) -> str:
        """File name of the batch: named by its start index, so re-runs overwrite."""
        return f"batch_{self.start:07d}.csv"


def next_window(
    next_start: int, total_rows: int, batch_size: int, min_rows: int | None = None
) -> BatchWindow | None:
    """The next batch window, or None when the stream is exhausted.

    When batches are big enough to monitor, a tail of fewer than ``min_rows`` rows (default:
    :data:`~healthpredict.core.constants.MIN_BATCH_ROWS`), which the monitor would refuse,
    joins the window before it instead of stopping the loop at the end of the stream.

    Raises:
        ValueError: For a non-positive batch size or a cursor outside the stream.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if next_start < 0 or next_start > total_rows:
        raise ValueError(
            f"next_batch_start_index {next_start} is outside the stream (0..{total_rows})"
        )
    if next_start >= total_rows:
        return None
    end = min(next_start + batch_size, total_rows)
    limit = MIN_BATCH_ROWS if min_rows is None else min_rows
    if batch_size >= limit and 0 < total_rows - end < limit:
        end = total_rows
    return BatchWindow(next_start, end)


def remaining_batches(
    total_rows: int, next_start: int, batch_size: int, min_rows: int | None = None
) -> int:
    """How many batches are left in the stream from the cursor (a short tail joins the last)."""
    if batch_size <= 0 or not 0 <= next_start < total_rows:
        return 0
    count, start = 0, next_start
    while (window := next_window(start, total_rows, batch_size, min_rows)) is not None:
        count, start = count + 1, window.end
    return count


@dataclass
class LoopState:
    """What the loop has done so far; persisted as JSON beside the batches.

    Label bookkeeping (entries are plain dicts, see :mod:`healthpredict.monitoring.labels`):
    ``pending_labels`` are monitored batches awaiting labels (``batch_uri``, ``start``, ``end``,
    ``index``, ``due``, ``rows``); ``labelled_batches`` those whose labels arrived (plus
    ``labelled_uri``, ``labelled_rows``, ``missing_rows``); ``new_labelled`` the
    ``labelled_uri`` of those the current champion never learned from; ``label_gaps`` the
    batches whose labels did not (all) arrive in time; ``unknown_labels`` the labels in the
    store for encounters never monitored (None: none).
    """

    next_batch_start_index: int = 0
    reference_uri: str | None = None  # drift reference after a promotion; None = initial_train
    # Held-out rows of the last promotion (predictions compared against); None = the monitor's
    # default next to initial_train.
    model_reference_uri: str | None = None
    history: list[dict] = field(default_factory=list)
    pending_labels: list[dict] = field(default_factory=list)
    labelled_batches: list[dict] = field(default_factory=list)
    new_labelled: list[str] = field(default_factory=list)
    label_gaps: list[dict] = field(default_factory=list)
    unknown_labels: dict | None = None
    # Write-ahead promotion (see healthpredict.pipelines.commit): recorded with the state the
    # step leads to before the champion alias moves, cleared once it moved.
    promotion: dict | None = None

    @classmethod
    def load(cls, root: str | None = None) -> LoopState:
        """Read the state, or a fresh one when none was written yet.

        Raises:
            LoopStateError: The file exists but is not a JSON object.
        """
        uri = layout.loop_state(root)
        if not storage.exists(uri):
            return cls()
        try:
            raw = storage.read_json(uri)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        except ValueError as exc:
            raise LoopStateError(
                f"{uri} is not a readable loop state ({exc}); restore it from a backup, or "
                "delete it to start the stream again from its first batch"
            ) from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> LoopState:
        """A state from its JSON document."""
        # A state written before a field existed loads with the field's default; fields it no
        # longer has (e.g. the old batches_since_retrain) are ignored.
        return cls(**{k: copy.deepcopy(raw[k]) for k in _STATE_FIELDS if k in raw})

    def snapshot(self) -> dict:
        """The state as a JSON-ready document, detached from this object."""
        return copy.deepcopy(self.__dict__)

    def restore(self, snapshot: dict) -> None:
        """Become the state ``snapshot`` (:meth:`snapshot`) describes."""
        self.__dict__.update(LoopState.from_dict(snapshot).__dict__)

    def save(self, root: str | None = None) -> None:
        """Write the state atomically."""
        storage.write_json(layout.loop_state(root), self.__dict__)

    @property
    def batches_done(self) -> int:
        """Batches monitored so far: the index of the next one (label due dates count these)."""
        return len(self.history)


_STATE_FIELDS = tuple(f for f in LoopState.__dataclass_fields__)


def write_batch(future: pd.DataFrame, window: BatchWindow, root: str | None = None) -> str:
    """Write rows of the future stream as a batch file, without the target; returns its URI.

    The monitor sees a batch as it arrives, before anyone knows who was readmitted.
    """
    uri = layout.batch_csv(window.name, root)
    rows = future.iloc[window.start : window.end]
    storage.write_csv(uri, rows.drop(columns=[TARGET], errors="ignore"))
    return uri
