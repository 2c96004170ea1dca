"""The monitoring loop: batch cursor in storage, a lease against concurrent runners, decisions.

The same step functions serve ``healthpredict loop`` and the Airflow monitoring DAG. The
cursor (``next_batch_start_index``) lives in ``<storage>/monitoring/state.json`` and moves
forward only after a batch was monitored (and, on drift, retrained) successfully, so a failed
or killed run processes the same batch again. Batch files are named by their start index, so
a re-run overwrites instead of duplicating.

Only one runner works on a storage at a time: the lease (``monitoring/lease.json``) is renewed
by a live runner every third of its lifetime (``HP_LOOP_LEASE_SECONDS``, default 300 s) and
expires when its holder dies; the next runner then takes it over and ends the MLflow runs the
dead one left RUNNING.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings
from healthpredict.mlops import tracking

log = logging.getLogger(__name__)

DRIFT_DETECTED = "DRIFT_DETECTED"
NO_DRIFT = "NO_DRIFT"


class LoopLockedError(RuntimeError):
    """Another loop runner holds the lease on this storage."""


class LoopStateError(ValueError):
    """The loop's ``state.json`` cannot be read; the message says how to recover."""


def monitoring_dir(root: str | None = None) -> str:
    """Folder (or URI) holding the loop's state, lease and batch files."""
    return storage.join(root or get_settings().storage, "monitoring")


# ---- pure decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchWindow:
    """Rows ``[start, end)`` of the future stream."""

    start: int
    end: int

    @property
    def name(self) -> str:
        """File name of the batch: named by its start index, so re-runs overwrite."""
        return f"batch_{self.start:07d}.csv"


def _min_rows() -> int:
    from healthpredict.core.constants import MIN_BATCH_ROWS

    return MIN_BATCH_ROWS


def next_window(
    next_start: int, total_rows: int, batch_size: int, min_rows: int | None = None
) -> BatchWindow | None:
    """The next batch window, or None when the stream is exhausted.

    When batches are big enough to monitor, a tail of fewer than ``min_rows`` rows (default:
    the drift monitor's :data:`~healthpredict.core.constants.MIN_BATCH_ROWS`), which the monitor would
    refuse, joins the window before it instead of stopping the loop at the end of the stream.

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
    limit = _min_rows() if min_rows is None else min_rows
    if batch_size >= limit and 0 < total_rows - end < limit:
        end = total_rows
    return BatchWindow(next_start, end)


def should_retrain(drift_status: str) -> bool:
    """Retrain exactly when the monitor reported drift; any other value is an error.

    Raises:
        ValueError: When the status is neither ``DRIFT_DETECTED`` nor ``NO_DRIFT``.
    """
    if drift_status not in (DRIFT_DETECTED, NO_DRIFT):
        raise ValueError(f"unexpected drift_status {drift_status!r}")
    return drift_status == DRIFT_DETECTED


# ---- state ----------------------------------------------------------------------------------


@dataclass
class LoopState:
    """What the loop has done so far; persisted as JSON beside the batches."""

    next_batch_start_index: int = 0
    batches_since_retrain: list[str] = field(default_factory=list)
    reference_uri: str | None = None  # drift reference after a promotion; None = initial_train
    # Held-out rows of the last promotion (predictions compared against); None = the monitor's
    # default next to initial_train.
    model_reference_uri: str | None = None
    history: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, root: str | None = None) -> LoopState:
        """Read the state, or a fresh one when none was written yet."""
        uri = storage.join(monitoring_dir(root), "state.json")
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
        return cls(
            **{
                k: raw[k]
                for k in (
                    "next_batch_start_index",
                    "batches_since_retrain",
                    "reference_uri",
                    "model_reference_uri",
                    "history",
                )
                if k in raw
            }
        )

    def save(self, root: str | None = None) -> None:
        """Write the state atomically."""
        storage.write_json(storage.join(monitoring_dir(root), "state.json"), self.__dict__)


def write_batch(future: pd.DataFrame, window: BatchWindow, root: str | None = None) -> str:
    """Write rows of the future stream as a batch file; returns its URI."""
    uri = storage.join(monitoring_dir(root), "batches", window.name)
    storage.write_csv(uri, future.iloc[window.start : window.end])
    return uri


# ---- lease ----------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Lease:
    """The loop's lease on a storage root, renewed in the background while it is held.

    Attributes:
        uri: The lease file.
        holder: ``host:pid:random``, unique per runner.
        seconds: Lifetime of one renewal.
        took_over_from: Holder of the expired lease this runner took over (it died), if any.
        lost: Why the background renewal stopped for good (somebody else holds the lease).
    """

    uri: str
    holder: str
    seconds: int
    took_over_from: str | None = None
    lost: LoopLockedError | None = None

    def payload(self) -> bytes:
        """The lease document with a fresh expiry time."""
        expires = _now() + dt.timedelta(seconds=self.seconds)
        return json.dumps({"holder": self.holder, "expires_at": expires.isoformat()}).encode()

    def renew(self) -> None:
        """Push the expiry forward, unless somebody took the lease over (then stop).

        Raises:
            LoopLockedError: The lease is no longer ours: stop before changing any state.
        """
        if self.lost is not None:
            raise self.lost
        held = _read_lease(self.uri)
        if not held or held.get("holder") != self.holder:
            raise LoopLockedError(
                f"lost the lease on {self.uri} to {held and held.get('holder')} (not renewed "
                f"within {self.seconds} s, HP_LOOP_LEASE_SECONDS); this runner stops without "
                "moving the loop forward"
            )
        storage.write_bytes(self.uri, self.payload())


def _keep_renewed(held: Lease, stop: threading.Event) -> None:
    """Renew ``held`` every third of its lifetime until ``stop`` is set or the lease is lost."""
    while not stop.wait(held.seconds / 3):
        try:
            held.renew()
        except LoopLockedError as exc:
            held.lost = exc
            log.error("%s", exc)
            return
        except Exception as exc:  # storage briefly down: the next tick tries again
            log.warning("could not renew the loop lease %s: %s", held.uri, exc)


@contextmanager
def lease(root: str | None = None, seconds: int | None = None) -> Iterator[Lease]:
    """Hold the loop's lease for the duration of the block, renewing it in the background.

    The lease is a small JSON file created exclusively; an expired lease (its holder died) is
    taken over and its holder recorded in ``took_over_from``. A second runner stops with
    :class:`LoopLockedError` naming the holder and when the lease expires.

    Args:
        root: Storage root (default from settings).
        seconds: Lifetime of the lease (default ``HP_LOOP_LEASE_SECONDS``).
    """
    held = Lease(
        storage.join(monitoring_dir(root), "lease.json"),
        f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        int(seconds or get_settings().loop_lease_seconds),
    )
    held.took_over_from = _acquire(held)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_keep_renewed, args=(held, stop), name="loop-lease", daemon=True
    )
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        # Bounded: a renewal stuck on a dead storage must not keep the runner from exiting
        # (at worst the lease it writes late expires by itself).
        renewer.join(timeout=held.seconds)
        current = _read_lease(held.uri)
        if current and current.get("holder") == held.holder:
            storage.delete(held.uri)


def _read_lease(uri: str) -> dict | None:
    try:
        return storage.read_json(uri)
    except (storage.StorageError, json.JSONDecodeError):
        return None


def _acquire(held: Lease) -> str | None:
    """Take the lease; returns the holder of the expired lease taken over, if any."""
    uri = held.uri
    stale_holder = None
    for _ in range(2):
        if _create_exclusive(uri, held.payload()):
            return stale_holder
        other = _read_lease(uri)
        expires = _expiry(other)
        if other and expires is not None and expires > _now():
            left = (expires - _now()).total_seconds()
            raise LoopLockedError(
                f"another loop runner ({other.get('holder')}) holds the lease on {uri} until "
                f"{other['expires_at']} (in {left:.0f} s); wait for it to finish. If it died, "
                "the lease expires by itself then (a live runner renews it every "
                f"{held.seconds / 3:.0f} s; HP_LOOP_LEASE_SECONDS sets its lifetime)"
            )
        stale_holder = (other or {}).get("holder")
        _remove_stale(uri, held.holder)  # expired or unreadable: its holder died; take it over
    raise LoopLockedError(f"could not take the lease at {uri}: another runner raced for it")


def _expiry(lease_doc: dict | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(lease_doc["expires_at"]) if lease_doc else None
    except (KeyError, TypeError, ValueError):
        return None  # a damaged lease protects nobody


def _remove_stale(uri: str, me: str) -> None:
    if storage.is_s3(uri):
        storage.delete(uri)
        return
    # A rename succeeds for exactly one of two runners racing to take over the same stale lease.
    try:
        os.rename(uri, f"{uri}.stale-{me.replace(':', '-')}")
    except FileNotFoundError:
        return
    Path(f"{uri}.stale-{me.replace(':', '-')}").unlink(missing_ok=True)


def _create_exclusive(uri: str, payload: bytes) -> bool:
    if storage.is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = uri[5:].split("/", 1)
        try:  # S3 conditional write: fails when the object already exists
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=payload, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written in full first, then linked into place: a hard link fails if the name exists, so
    # exactly one runner wins, and nobody ever reads a half-written (empty) lease, which would
    # look damaged and be taken over.
    draft = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    draft.write_bytes(payload)
    try:
        os.link(draft, path)
    except FileExistsError:
        return False
    finally:
        draft.unlink(missing_ok=True)
    return True


# ---- the steps, shared by the CLI loop and the Airflow DAG -----------------------------------


@dataclass
class BatchOutcome:
    """What happened to one batch."""

    window: BatchWindow
    batch_uri: str
    drift_status: str
    drifted_share: float | None
    monitor_run_dir: str
    retrain: dict | None = None

    def as_dict(self) -> dict:
        """JSON-ready summary for the state history."""
        return {
            "start": self.window.start,
            "end": self.window.end,
            "batch_uri": self.batch_uri,
            "drift_status": self.drift_status,
            "drifted_share": self.drifted_share,
            "monitor_run_dir": self.monitor_run_dir,
            "retrain": self.retrain,
        }


def monitor_parameters(state: LoopState, batch_uri: str, default_reference: str) -> dict:
    """Drift-monitor parameters for a batch, as the state implies.

    Since a promotion, the batches the champion learned from are the data reference and its
    retraining holdout is the prediction reference.
    """
    params = {
        "new_data_path": batch_uri,
        "reference_data_path": state.reference_uri or default_reference,
    }
    if state.model_reference_uri:
        params["model_reference_path"] = state.model_reference_uri
    return params


def monitor_batch(params: dict):
    """Run the drift-monitor notebook with ``params``; returns the notebook run's result."""
    from healthpredict import runs

    return runs.run("03_drift_monitor", params)


def retrain_on(batch_uris: list[str], **params):
    """Run the retrain notebook (search + promotion gate) on labelled batches."""
    from healthpredict import runs

    return runs.run("04_retrain", {"retraining_data_path": list(batch_uris), **params})


def write_reference(batch_uris: list[str], name: str, root: str | None = None) -> str:
    """Concatenate batches into a new drift reference (the data a new champion learned from)."""
    from healthpredict.data.uci import read_raw_csv

    frame = pd.concat([read_raw_csv(u) for u in batch_uris], ignore_index=True)
    return storage.write_csv(storage.join(monitoring_dir(root), "reference", f"{name}.csv"), frame)


def process_batch(
    future: pd.DataFrame,
    state: LoopState,
    *,
    batch_size: int,
    model_uri: str,
    default_reference: str,
    retrain_window: int = 5,
    monitor_params: dict | None = None,
    retrain_params: dict | None = None,
    root: str | None = None,
    held: Lease | None = None,
) -> BatchOutcome | None:
    """Monitor the next batch and retrain on drift; advance and save the state only on success.

    Returns None when the stream is exhausted. Any failure raises with the state untouched,
    so the next call processes the same batch again; the exception gets a note naming the
    batch. With ``held``, the lease is checked to still be ours just before the state moves.
    """
    window = next_window(state.next_batch_start_index, len(future), batch_size)
    if window is None:
        return None
    batch_uri = storage.join(monitoring_dir(root), "batches", window.name)
    try:
        batch_uri = write_batch(future, window, root)
        result = monitor_batch(
            {
                **monitor_parameters(state, batch_uri, default_reference),
                "mlflow_model_uri": model_uri,
                **(monitor_params or {}),
            }
        )
        status = result.scraps["drift_status"]
        outcome = BatchOutcome(
            window, batch_uri, status, result.scraps.get("drifted_share"), str(result.run_dir)
        )
        recent = [*state.batches_since_retrain, batch_uri][-retrain_window:]
        if should_retrain(status):
            retrained = retrain_on(recent, **(retrain_params or {}))
            outcome.retrain = retrain_summary(retrained.scraps, str(retrained.run_dir))
        if held is not None:
            held.renew()  # still ours? otherwise another runner owns the cursor now
        advance(state, outcome, recent, root=root)
    except Exception as exc:
        exc.add_note(
            f"batch rows {window.start}-{window.end} ({batch_uri}) was not completed: the loop "
            f"state is unchanged and the next run starts again at row {window.start}"
        )
        raise
    return outcome


def retrain_summary(scraps: dict, run_dir: str) -> dict:
    """What the loop keeps of a retraining run's scraps."""
    return {
        "decision": scraps["decision"],
        "promoted": bool(scraps["promoted"]),
        "reason": scraps["reason"],
        "challenger_version": scraps["challenger_version"],
        "holdout_path": scraps.get("holdout_path"),
        "run_dir": run_dir,
    }


def advance(
    state: LoopState,
    outcome: BatchOutcome,
    recent: list[str],
    *,
    root: str | None = None,
    **record: object,
) -> dict:
    """Move the cursor past ``outcome``'s batch and save the state: the loop's only step forward.

    Called once every step for the batch succeeded. After a promotion the recent batches become
    the drift reference (the data the new champion learned from), the retraining holdout the
    prediction reference, and the list of recent batches starts again.

    Args:
        state: State to update (in place) and save.
        outcome: The batch's outcome; ``outcome.retrain`` holds the retraining summary, if any.
        recent: Batches since the last promotion, this one included.
        root: Storage root.
        **record: Extra fields for the history entry (the DAG adds its run id).

    Returns:
        The history entry appended.
    """
    retrain = outcome.retrain or {}
    if retrain.get("promoted"):
        state.reference_uri = write_reference(recent, f"reference_{outcome.window.start:07d}", root)
        state.model_reference_uri = retrain.get("holdout_path") or None
        recent = []
    entry = {**outcome.as_dict(), **record}
    state.next_batch_start_index = outcome.window.end
    state.batches_since_retrain = recent
    state.history.append(entry)
    state.save(root)
    return entry


def run_loop(
    *,
    batch_size: int = 2000,
    max_batches: int | None = None,
    data_dir: str | None = None,
    model_uri: str | None = None,
    retrain_window: int = 5,
    monitor_params: dict | None = None,
    retrain_params: dict | None = None,
    root: str | None = None,
    on_batch=None,
) -> list[BatchOutcome]:
    """Monitor the future stream batch by batch, retraining on drift, under the loop's lease.

    Args:
        batch_size: Rows per batch.
        max_batches: Stop after this many batches (None: until the stream is exhausted).
        data_dir: Prepared data folder (default ``<storage>/processed_data``).
        model_uri: Production model (default ``models:/<model_name>@champion``).
        retrain_window: How many recent batches a retrain learns from.
        monitor_params: Extra parameters for the drift-monitor notebook.
        retrain_params: Extra parameters for the retrain notebook.
        root: Storage root (default from settings).
        on_batch: Called with each :class:`BatchOutcome` (progress display).

    Raises:
        ValueError: ``batch_size`` is below :data:`~healthpredict.core.constants.MIN_BATCH_ROWS`.
        LoopLockedError: Another runner holds the lease (nothing was done).
        healthpredict.mlops.tracking.TrackingUnavailableError: MLflow cannot be reached, checked
            with the model (:func:`preflight`) before any batch is written or kernel started.
        healthpredict.runs.NotebookRunError: A batch's notebook run failed; its files are
            in the rendered folder, the state did not move and a note names the batch.
    """
    from healthpredict.data.split import load_split
    from healthpredict.mlops.registry import champion_uri

    data_dir = data_dir or layout.processed_data()
    model_uri = model_uri or champion_uri()
    outcomes: list[BatchOutcome] = []
    if batch_size < _min_rows():
        raise ValueError(
            f"batch_size {batch_size} is below the {_min_rows()} rows the drift monitor needs"
        )
    preflight(model_uri)
    with lease(root) as held:
        if held.took_over_from:
            _close_runs_of(held.took_over_from)
        future = load_split("future_data", data_dir)  # read once, sliced per batch
        state = LoopState.load(root)
        saved = os.environ.get(tracking.LOOP_HOLDER_ENV)
        os.environ[tracking.LOOP_HOLDER_ENV] = held.holder  # tags the runs this runner starts
        try:
            while max_batches is None or len(outcomes) < max_batches:
                outcome = process_batch(
                    future,
                    state,
                    batch_size=batch_size,
                    model_uri=model_uri,
                    default_reference=storage.join(data_dir, "initial_train.csv"),
                    retrain_window=retrain_window,
                    monitor_params=monitor_params,
                    retrain_params=retrain_params,
                    root=root,
                    held=held,
                )
                if outcome is None:
                    break
                outcomes.append(outcome)
                if on_batch:
                    on_batch(outcome)
        finally:
            if saved is None:
                os.environ.pop(tracking.LOOP_HOLDER_ENV, None)
            else:
                os.environ[tracking.LOOP_HOLDER_ENV] = saved
    return outcomes


def preflight(model_uri: str):
    """Check what every batch needs before any batch is written or kernel started.

    Returns:
        The model's :class:`~healthpredict.mlops.registry.ModelInfo`.

    Raises:
        healthpredict.mlops.tracking.TrackingUnavailableError: MLflow cannot be reached.
        healthpredict.mlops.registry.ModelNotFoundError: The model or its alias does not exist.
        healthpredict.mlops.monitor.ModelSchemaError: The model was trained on another raw schema.
    """
    from healthpredict.mlops.monitor import check_model

    tracking.check_reachable()
    return check_model(model_uri)


def _close_runs_of(holder: str) -> None:
    """End the MLflow runs a dead runner left RUNNING (best effort: never blocks the loop)."""
    try:
        tracking.close_stale_runs(holder)
    except Exception as exc:
        log.warning("could not end the runs of the dead loop runner %s: %s", holder, exc)


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
