"""Late labels: the label store, and joining arrived labels to monitored batches by encounter.

A 30-day readmission is known about 30 days after discharge, so the loop monitors a batch
without its target and learns its labels later. Labels arrive in the label store
(``<storage>/monitoring/labels/``: CSV files of ``encounter_id, readmitted``), written by the
hospital's systems or, when the loop replays the ``future_data`` stream, by the loop itself
(:func:`deliver_replay_labels`, the replay's stand-in for the hospital).

Each step, :func:`attach_labels` joins the store to the batches whose labels are due (a batch
monitored at step ``t`` is due at ``t + label_delay_batches``; labels that come earlier wait for
it), by encounter id:

- a batch whose every encounter has a label becomes a labelled batch (features + ``readmitted``
  under ``<storage>/monitoring/labelled/``);
- a batch still incomplete ``timeout`` batches after its labels were due becomes a **label
  gap**: with some labels, its labelled part is used and the missing count recorded; with none,
  it is excluded from training;
- the same label delivered twice is harmless; the same encounter labelled twice with different
  values stops the step with :class:`LabelConflictError` (nothing moves);
- labels for encounters that were never monitored are counted, with an example id, in the
  state and the history (:func:`unknown_labels`). They are not an error: a hospital's label
  feed may cover encounters outside the monitored stream (or ahead of the loop's cursor), and
  refusing them would stop monitoring for data it does not need; they are shown, never silently
  dropped.

Everything this module writes is named by the batch's start row, so a step that failed or was
killed and runs again writes the same files with the same content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.data.schema import RAW_COLUMNS, TARGET
from healthpredict.data.uci import read_raw_csv

ENCOUNTER = "encounter_id"
LABEL_COLUMNS = (ENCOUNTER, TARGET)
LABEL_VALUES = frozenset(next(c.allowed for c in RAW_COLUMNS if c.name == TARGET))
FILE = "file"  # the store file a label came from, for error messages
EXAMPLES = 5  # ids named in a message


class LabelStoreError(ValueError):
    """A file of the label store cannot be used; the message names the file and the problem."""


class LabelConflictError(LabelStoreError):
    """The same encounter was labelled twice with different values."""


def _name(prefix: str, start: int) -> str:
    return f"{prefix}_{int(start):07d}.csv"


def pending_entry(batch: Mapping[str, Any], index: int, delay: int) -> dict[str, Any]:
    """The record of a monitored batch awaiting labels.

    Args:
        batch: ``batch_uri``, ``start``, ``end`` of the batch.
        index: Its position in the stream (0 for the first batch monitored).
        delay: Batches after which its labels are due.
    """
    return {
        "batch_uri": batch["batch_uri"],
        "start": int(batch["start"]),
        "end": int(batch["end"]),
        "index": int(index),
        "due": int(index) + int(delay),
        "rows": int(batch["end"]) - int(batch["start"]),
    }


def deliver_replay_labels(
    stream: pd.DataFrame, batches: Iterable[Mapping[str, Any]], step: int, root: str | None = None
) -> list[str]:
    """The replay's stand-in for the hospital: write the labels of the batches due by ``step``.

    Labels of a batch come from the stream's own ``readmitted`` column; the file is named by the
    batch's start, so delivering again rewrites the same file.

    Returns:
        The label files written.

    Raises:
        LabelStoreError: The stream has no ``readmitted`` column to replay.
    """
    due = [b for b in batches if int(b["due"]) <= step]
    if due and not set(LABEL_COLUMNS) <= set(stream.columns):
        raise LabelStoreError(
            f"the stream has no {TARGET!r} column: the replay cannot deliver labels; set "
            "label_source to 'external' and put the labels in the label store"
        )
    return [
        storage.write_csv(
            layout.label_csv(_name("labels", b["start"]), root),
            stream.iloc[int(b["start"]) : int(b["end"])][list(LABEL_COLUMNS)],
        )
        for b in due
    ]


def _read_label_file(uri: str) -> pd.DataFrame:
    try:
        frame = storage.read_csv(uri, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        raise LabelStoreError(f"label file {uri} is not a readable CSV: {exc}") from exc
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise LabelStoreError(
            f"label file {uri} lacks the column(s) {', '.join(missing)} (it needs "
            f"{', '.join(LABEL_COLUMNS)}; has {', '.join(map(str, frame.columns)) or 'none'})"
        )
    ids = pd.to_numeric(frame[ENCOUNTER], errors="coerce")
    bad_id = ids.isna() | (ids != ids.round())
    bad_value = ~frame[TARGET].isin(LABEL_VALUES)
    if bad_id.any() or bad_value.any():
        rows = (bad_id | bad_value).to_numpy().nonzero()[0][:EXAMPLES] + 2  # header is line 1
        raise LabelStoreError(
            f"label file {uri}: {int(bad_id.sum())} row(s) without an integer {ENCOUNTER} and "
            f"{int(bad_value.sum())} with a {TARGET} outside {sorted(LABEL_VALUES)} "
            f"(lines {', '.join(map(str, rows))})"
        )
    return pd.DataFrame(
        {ENCOUNTER: ids.astype("int64"), TARGET: frame[TARGET].to_numpy(), FILE: uri}
    )


def read_label_store(root: str | None = None) -> pd.DataFrame:
    """Every label in the store, one row per encounter (``encounter_id``, ``readmitted``, ``file``).

    A label delivered twice with the same value counts once (the first file is kept).

    Raises:
        LabelStoreError: A file lacks a column, or holds an id or value that is no label.
        LabelConflictError: An encounter has two different labels; the message names the
            encounters and the files.
    """
    files = [u for u in storage.list_uris(layout.labels_dir(root)) if u.endswith(".csv")]
    if not files:
        return pd.DataFrame({ENCOUNTER: pd.Series(dtype="int64"), TARGET: [], FILE: []})
    store = pd.concat([_read_label_file(u) for u in files], ignore_index=True)
    store = store.drop_duplicates([ENCOUNTER, TARGET])
    twice = store[store.duplicated(ENCOUNTER, keep=False)]
    if len(twice):
        ids = twice[ENCOUNTER].drop_duplicates()
        shown = []
        for encounter in ids.iloc[:EXAMPLES]:
            rows = twice[twice[ENCOUNTER] == encounter]
            shown.append(
                f"{encounter} ("
                + ", ".join(f"{v!r} in {f}" for v, f in zip(rows[TARGET], rows[FILE], strict=True))
                + ")"
            )
        raise LabelConflictError(
            f"{len(ids)} encounter(s) labelled twice with different values: "
            f"{'; '.join(shown)}{' ...' if len(ids) > EXAMPLES else ''}. Correct or remove the "
            "wrong file; nothing was attached and the loop state did not move"
        )
    return store.reset_index(drop=True)


@dataclass
class LabelPlan:
    """What one step does with labels, applied to the state only when the step succeeds.

    Attributes:
        pending: Batches still awaiting labels after the step (the new batch included).
        labelled: Batches labelled in this step (entries with ``labelled_uri``).
        gaps: Label gaps found in this step.
        unknown: Labels in the store for encounters never monitored (None: none).
        delivered: Label files the replay wrote in this step.
    """

    pending: list[dict] = field(default_factory=list)
    labelled: list[dict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    unknown: dict | None = None
    delivered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom)."""
        return {
            "pending": list(self.pending),
            "labelled": list(self.labelled),
            "gaps": list(self.gaps),
            "unknown": self.unknown,
            "delivered": list(self.delivered),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelPlan:
        """The plan from its :meth:`as_dict` form."""
        return cls(**{k: data[k] for k in ("pending", "labelled", "gaps", "unknown", "delivered")})

    def summary(self) -> dict[str, Any]:
        """What the history keeps of the step's labels."""
        return {
            "labelled": [b["labelled_uri"] for b in self.labelled],
            "labelled_rows": sum(b["labelled_rows"] for b in self.labelled),
            "pending": len(self.pending),
            "gaps": list(self.gaps),
            "unknown": self.unknown,
            "delivered": list(self.delivered),
        }


def _encounters(uri: str) -> pd.Series:
    return storage.read_csv(uri, usecols=[ENCOUNTER])[ENCOUNTER]


def attach_labels(
    pending: Sequence[Mapping[str, Any]],
    store: pd.DataFrame,
    step: int,
    timeout: int,
    root: str | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Join the store's labels to the batches awaiting them, by encounter id.

    Args:
        pending: Batches awaiting labels (:func:`pending_entry`).
        store: :func:`read_label_store`.
        step: The index of the batch being monitored now.
        timeout: Batches past due after which an incomplete batch becomes a label gap.
        root: Storage root.

    Returns:
        ``(still_pending, labelled, gaps)``. A labelled entry adds ``labelled_uri``,
        ``labelled_rows`` and ``missing_rows`` to its pending entry; a gap adds ``kind``
        (``partial``: its labelled part is used; ``never_arrived``: excluded from training),
        ``labelled_rows``, ``missing_rows``, an example ``missing_encounter_id`` and ``step``.
    """
    labels = store.set_index(ENCOUNTER)[TARGET]
    still, labelled, gaps = [], [], []
    for entry in pending:
        if step < int(entry["due"]):  # early labels wait for their due step: one read per batch
            still.append(dict(entry))
            continue
        batch = read_raw_csv(entry["batch_uri"])
        found = batch[ENCOUNTER].map(labels)
        n_labelled = int(found.notna().sum())
        missing = len(batch) - n_labelled
        timed_out = step >= int(entry["due"]) + int(timeout)
        if missing and not timed_out:
            still.append(dict(entry))
            continue
        if missing:
            gaps.append(
                {
                    **entry,
                    "kind": "partial" if n_labelled else "never_arrived",
                    "labelled_rows": n_labelled,
                    "missing_rows": missing,
                    "missing_encounter_id": int(batch.loc[found.isna(), ENCOUNTER].iloc[0]),
                    "step": int(step),
                }
            )
        if n_labelled:
            rows = batch.assign(**{TARGET: found})[found.notna()]
            uri = storage.write_csv(
                layout.labelled_csv(_name("labelled", entry["start"]), root), rows
            )
            labelled.append(
                {**entry, "labelled_uri": uri, "labelled_rows": n_labelled, "missing_rows": missing}
            )
    return still, labelled, gaps


def unknown_labels(store: pd.DataFrame, monitored_batches: Iterable[str]) -> dict | None:
    """Labels in the store whose encounter is in none of the monitored batches.

    Returns:
        None when every label matches a monitored encounter; else ``count``, an example
        ``encounter_id`` and the ``files`` holding them.
    """
    if store.empty:
        return None
    seen = pd.concat([_encounters(u) for u in dict.fromkeys(monitored_batches)], ignore_index=True)
    unknown = store[~store[ENCOUNTER].isin(seen)]
    if unknown.empty:
        return None
    return {
        "count": len(unknown),
        "example_encounter_id": int(unknown[ENCOUNTER].iloc[0]),
        "files": sorted(unknown[FILE].unique().tolist()),
    }


def plan_labels(
    batch: Mapping[str, Any],
    step: int,
    pending: Sequence[Mapping[str, Any]],
    monitored: Sequence[str],
    *,
    delay: int,
    timeout: int,
    replay: pd.DataFrame | None = None,
    root: str | None = None,
) -> LabelPlan:
    """The labels part of one step: deliver (replay), read the store, attach, count unknowns.

    Writes only files named by batch start (label deliveries, labelled batches); the state is
    not touched: the step applies the plan once everything else succeeded.

    Args:
        batch: The batch being monitored now (``batch_uri``, ``start``, ``end``).
        step: Its index in the stream (batches monitored before it).
        pending: Batches awaiting labels before this step.
        monitored: Every earlier monitored batch (``batch_uri``), for the unknown-label count.
        delay: ``label_delay_batches``.
        timeout: ``label_timeout_batches``.
        replay: The stream, when the loop delivers its labels itself (``label_source``
            ``replay``); None when labels come from outside.
        root: Storage root.

    Raises:
        LabelStoreError: A label file is unusable, or the replay has no labels to deliver.
        LabelConflictError: An encounter has two different labels.
    """
    waiting = [*pending, pending_entry(batch, step, delay)]
    delivered = [] if replay is None else deliver_replay_labels(replay, waiting, step, root)
    store = read_label_store(root)
    still, labelled, gaps = attach_labels(waiting, store, step, timeout, root)
    unknown = unknown_labels(store, [*monitored, batch["batch_uri"]])
    return LabelPlan(still, labelled, gaps, unknown, delivered)


def set_aside(tag: str, root: str | None = None) -> list[str]:
    """Move the label store and the labelled batches aside, for a loop that starts the stream again.

    A restarted stream (``healthpredict demo``, a deleted ``state.json``) may be other data
    whose encounter ids clash with the old labels; they are kept, not lost, under
    ``<storage>/monitoring/set-aside-<tag>/``.

    Returns:
        The files moved (their new URIs).
    """
    base = layout.monitoring_dir(root)
    moved = []
    for folder in (layout.labels_dir(root), storage.join(base, "labelled")):
        for uri in storage.list_uris(folder):
            relative = uri[len(base) :].lstrip("/")
            target = storage.join(base, f"set-aside-{tag}", relative)
            storage.write_bytes(target, storage.read_bytes(uri))
            storage.delete(uri)
            moved.append(target)
    return moved
