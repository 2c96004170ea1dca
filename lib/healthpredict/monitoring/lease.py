"""The lease that lets one monitoring-loop runner at a time advance the loop's state.

The lease (``<storage>/monitoring/lease.json``) is renewed by a live runner every third of its
lifetime (``HP_LOOP_LEASE_SECONDS``, default 300 s) and expires when its holder dies; the next
runner then takes it over (and may end the MLflow runs the dead one left RUNNING).
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
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings

log = logging.getLogger(__name__)


class LoopLockedError(RuntimeError):
    """Another loop runner holds the lease on this storage."""


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
        layout.loop_lease(root),
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
