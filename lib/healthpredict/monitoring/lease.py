"""The lease that lets one monitoring-loop runner at a time advance the loop's state.

The lease (``<storage>/monitoring/lease.json``: ``holder``, ``expires_at``, on S3 once released
``released``) is renewed by a live runner every third of its lifetime (``HP_LOOP_LEASE_SECONDS``,
default 300 s) and expires when its holder dies; the next runner then takes it over (and may end
the MLflow runs the dead one left RUNNING).

Every change is a compare-and-swap on the exact version of the lease a runner read, so at most
one runner holds it: creation, takeover, renewal and release change nothing when somebody else
changed the lease in between.

- S3: conditional writes. Creation ``IfNoneMatch="*"``; takeover, renewal and release
  ``IfMatch=<ETag read>``. Release writes a ``released`` copy, expired at once, rather than
  deleting (conditional deletes are not on every S3; a plain one could remove a lease just
  taken); a released lease is taken over without reporting a death.
- Local files: an exclusive ``fcntl.flock`` on a sidecar ``.lease.json.lock`` around
  read-compare-replace (``os.replace`` of a fully written draft) or the delete of a release.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
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
from typing import NamedTuple

from botocore.exceptions import ClientError

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings

log = logging.getLogger(__name__)

# Compare-and-swap attempts before giving up: each failure means another runner wrote the lease.
ATTEMPTS = 3
# S3 answers to a failed condition: ETag changed, concurrent conditional write, object gone.
_CAS_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"}


class LoopLockedError(RuntimeError):
    """Another loop runner holds the lease on this storage."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Seen(NamedTuple):
    doc: dict | None  # None if absent or damaged
    version: str | None  # None if absent


@dataclass
class Lease:
    """The loop's lease on a storage root, renewed in the background while it is held.

    Attributes:
        uri: The lease file.
        holder: ``host:pid:random``, unique per runner.
        seconds: Lifetime of one renewal.
        took_over_from: Holder of the expired lease this runner took over (it died), if any.
        lost: Why the lease is no longer ours (somebody else holds it); set once, for good.
    """

    uri: str
    holder: str
    seconds: int
    took_over_from: str | None = None
    lost: LoopLockedError | None = None
    # Renewals from the loop and from the background thread, one at a time: otherwise one
    # would fail the other's compare-and-swap.
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def payload(self, released: bool = False) -> bytes:
        """The lease document with a fresh expiry time (now, when ``released``)."""
        expires = _now() + dt.timedelta(seconds=0 if released else self.seconds)
        doc = {"holder": self.holder, "expires_at": expires.isoformat()}
        return json.dumps(doc | ({"released": True} if released else {})).encode()

    def owns(self, doc: dict | None) -> bool:
        """Whether ``doc`` is this runner's lease, still held."""
        return bool(doc) and doc.get("holder") == self.holder and not doc.get("released")

    def renew(self) -> None:
        """Push the expiry forward if the lease is still exactly ours (else stop for good).

        Raises:
            LoopLockedError: The lease is no longer ours: stop before changing any state.
        """
        with self._mutex:
            for _ in range(ATTEMPTS):
                if self.lost is not None:
                    raise self.lost
                seen = _read(self.uri)
                if not self.owns(seen.doc):
                    self.lost = LoopLockedError(
                        f"lost the lease on {self.uri} to {(seen.doc or {}).get('holder')} (not "
                        f"renewed within {self.seconds} s, HP_LOOP_LEASE_SECONDS); this runner "
                        "stops without moving the loop forward"
                    )
                    raise self.lost
                if _swap(self.uri, seen.version, self.payload()):
                    return
        raise LoopLockedError(f"could not renew the lease at {self.uri}: it kept changing")

    def release(self) -> None:
        """Give the lease up if it is still exactly ours; somebody else's lease stays."""
        # Not under the mutex: a renewal stuck on a dead storage must not hold the exit up, and
        # either order of the two compare-and-swaps leaves the lease released.
        for _ in range(ATTEMPTS):
            seen = _read(self.uri)
            if not self.owns(seen.doc):
                return
            # Local: deleted under the lock. S3: a released copy (see the module docstring).
            gone = None if not storage.is_s3(self.uri) else self.payload(released=True)
            if _swap(self.uri, seen.version, gone):
                return


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

    An expired lease (its holder died) is taken over and its holder recorded in
    ``took_over_from``. A second runner stops with :class:`LoopLockedError` naming the holder and
    when the lease expires.

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
        try:
            held.release()
        except Exception as exc:  # storage down: the lease expires by itself
            log.warning("could not release the loop lease %s: %s", held.uri, exc)


def _acquire(held: Lease) -> str | None:
    """Take the lease; returns the holder of the expired lease taken over (it died), if any."""
    uri = held.uri
    for _ in range(ATTEMPTS):
        seen = _read(uri)
        other = seen.doc
        expires = _expiry(other)
        if other and not other.get("released") and expires is not None and expires > _now():
            left = (expires - _now()).total_seconds()
            raise LoopLockedError(
                f"another loop runner ({other.get('holder')}) holds the lease on {uri} until "
                f"{other['expires_at']} (in {left:.0f} s); wait for it to finish. If it died, "
                "the lease expires by itself then (a live runner renews it every "
                f"{held.seconds / 3:.0f} s; HP_LOOP_LEASE_SECONDS sets its lifetime)"
            )
        # Absent, released, expired or damaged: replace exactly the version read, nothing newer.
        if _swap(uri, seen.version, held.payload()):
            return None if not other or other.get("released") else other.get("holder")
    raise LoopLockedError(f"could not take the lease at {uri}: other runners kept racing for it")


def _expiry(lease_doc: dict | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(lease_doc["expires_at"]) if lease_doc else None
    except (KeyError, TypeError, ValueError):
        return None  # a damaged lease protects nobody


def _read(uri: str) -> _Seen:
    """The lease and its version: the S3 ETag, or the sha256 of the local file."""
    if storage.is_s3(uri):
        bucket, key = uri[5:].split("/", 1)
        try:
            obj = storage.s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return _Seen(None, None)
            raise
        data, version = obj["Body"].read(), obj["ETag"]
    else:
        try:
            data = Path(uri).read_bytes()  # whole old or whole new: writers os.replace
        except FileNotFoundError:
            return _Seen(None, None)
        version = hashlib.sha256(data).hexdigest()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    return _Seen(doc if isinstance(doc, dict) else None, version)


def _swap(uri: str, version: str | None, payload: bytes | None) -> bool:
    """Compare-and-swap: replace the lease at ``version`` (None: absent) by ``payload``.

    ``payload`` None deletes the lease (local only). Returns False, changing nothing, when the
    lease is no longer at ``version``.
    """
    if storage.is_s3(uri):
        bucket, key = uri[5:].split("/", 1)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:  # S3 compares and writes atomically
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=payload, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CAS_FAILED:
                return False
            raise
        return True
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic because every writer of the lease holds this exclusive lock from its compare to its
    # replace, so nobody can change the lease in between; the kernel drops the lock when the
    # process dies. The lock file stays: deleting it would let two runners lock different files.
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _read(uri).version != version:
            return False
        if payload is None:
            path.unlink()
        else:
            storage.write_bytes(uri, payload)  # a full draft, then os.replace
        return True
    finally:
        os.close(fd)  # releases the lock
