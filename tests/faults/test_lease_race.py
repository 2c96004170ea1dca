"""The loop's lease under races: separate processes racing for a dead runner's lease, and the
exact interleavings a compare-and-swap must survive, on local storage and on S3 (moto server).

On S3 the tests use a moto server that applies one request at a time: stock moto checks a
condition and then writes in two steps on concurrent threads, so two conditional writes racing
on it can both succeed (measured: 1 round in 40, 4 writers), where real S3 applies them
atomically.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

from healthpredict.core import layout, storage
from healthpredict.monitoring import lease as lease_mod
from healthpredict.monitoring.lease import Lease, LoopLockedError, lease

pytestmark = pytest.mark.faults

RUNNERS = 4
ROUNDS = {"local": 30, "s3": 15}
SECONDS = 60  # no background renewal fires during a round
BARRIER_TIMEOUT = 120  # the first round waits for every runner to start (spawn + imports)

# moto's server, one request at a time (see the module docstring).
SERIAL_MOTO = """
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
os.environ["MOTO_PORT"] = sys.argv[1]
app = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()
def serial(environ, start_response):
    with one_at_a_time:
        return app(environ, start_response)
run_simple("127.0.0.1", int(sys.argv[1]), serial, threaded=True,
           request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="module")
def serial_moto():
    """A moto S3 server on 127.0.0.1 that applies one request at a time; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERIAL_MOTO, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["local", "s3"])
def root(request, hp_env, monkeypatch):
    """A storage root: a local folder, or a fresh bucket on the serial moto server."""
    if request.param == "local":
        return str(hp_env / "store")
    import boto3

    from healthpredict.core.settings import get_settings

    url = request.getfixturevalue("serial_moto")
    monkeypatch.setenv("HP_S3_ENDPOINT_URL", url)
    for name, value in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def _write_dead_lease(root: str, holder: str) -> str:
    """The lease a runner that died left behind: expired, in the format older versions wrote."""
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    return storage.write_json(layout.loop_lease(root), {"holder": holder, "expires_at": past})


def _runner(environ: dict[str, str], roots: list[str], barrier, results) -> None:
    """One runner process: in each round, starts with the others and tries to take the lease."""
    from healthpredict.core.settings import get_settings

    os.environ.update(environ)  # the test's settings (the fork server started with others)
    get_settings.cache_clear()
    for number, root in enumerate(roots):
        barrier.wait(BARRIER_TIMEOUT)
        waited = False
        try:
            with lease(root, seconds=SECONDS) as held:
                barrier.wait(BARRIER_TIMEOUT)  # every other runner has tried by now
                waited = True
                still = storage.read_json(held.uri)["holder"] == held.holder
                outcome = ("won", held.holder, held.took_over_from, still)
        except LoopLockedError as exc:
            outcome = ("refused", str(exc), None, None)
        except Exception as exc:  # reported, and the others are not left waiting
            outcome = ("error", repr(exc), None, None)
        if not waited:
            barrier.wait(BARRIER_TIMEOUT)
        results.put((number, *outcome))


def test_runners_racing_for_a_dead_runners_lease_exactly_one_wins(root, request):
    rounds = ROUNDS[request.node.callspec.params["root"]]
    roots = [storage.join(root, f"round{n:02d}") for n in range(rounds)]
    for n, round_root in enumerate(roots):
        _write_dead_lease(round_root, f"dead-host:{n}:abc")
    # Separate processes forked from one server that imported the heavy modules once (spawning
    # each runner imports pandas four times per test: ~15 s on two busy cores). Python 3.11's
    # fork server ignores the parent's sys.path, so the preload names installed modules only.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pytest", "healthpredict.monitoring.lease"])
    barrier, results = ctx.Barrier(RUNNERS), ctx.Queue()
    procs = [
        ctx.Process(target=_runner, args=(dict(os.environ), roots, barrier, results))
        for _ in range(RUNNERS)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=BARRIER_TIMEOUT) for _ in range(RUNNERS * rounds)]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * RUNNERS
    wrong = []  # every round that went wrong, to see how often
    for n, round_root in enumerate(roots):
        mine = [o[1:] for o in outcomes if o[0] == n]
        won = [o for o in mine if o[0] == "won"]
        refusals = [o[1] for o in mine if o[0] == "refused"]
        if len(won) != 1 or len(refusals) != RUNNERS - 1:
            wrong.append(f"round {n}: {len(won)} runners hold the lease: {mine}")
            continue
        ((_, winner, took_over_from, still_held),) = won
        if took_over_from != f"dead-host:{n}:abc" or not still_held:
            wrong.append(f"round {n}: the winner {won} did not take over the dead runner's lease")
        if not all(f"another loop runner ({winner}) holds the lease" in r for r in refusals):
            wrong.append(f"round {n}: a refusal does not name the winner: {refusals}")
        if not _released(round_root, winner):
            wrong.append(f"round {n}: the winner did not release the lease")
    assert wrong == [], f"{len(wrong)} of {rounds} rounds went wrong"


def _released(root: str, holder: str) -> bool:
    """Whether ``holder`` released the lease: gone (local) or a released, expired copy (S3)."""
    uri = layout.loop_lease(root)
    if not storage.is_s3(uri):
        return not storage.exists(uri)
    doc = lease_mod._read(uri).doc or {}
    expired = dt.datetime.fromisoformat(doc.get("expires_at", "9999-01-01T00:00:00+00:00"))
    return (
        doc.get("holder") == holder
        and doc.get("released") is True
        and expired <= dt.datetime.now(dt.UTC)
    )


def test_a_fresh_lease_created_after_the_stale_one_was_read_is_not_replaced(root):
    uri = _write_dead_lease(root, "dead-host:1:abc")
    stale = lease_mod._read(uri)  # runner B reads the dead runner's lease...
    with lease(root, seconds=SECONDS) as first:  # ...runner A takes it over first
        assert first.took_over_from == "dead-host:1:abc"
        late = Lease(uri, "late-host:2:def", SECONDS)
        # B's takeover of the version it read changes nothing: that version is gone.
        assert not lease_mod._swap(uri, stale.version, late.payload())
        assert storage.read_json(uri)["holder"] == first.holder
        first.renew()  # still exactly ours
        # And B's acquisition, seeing the live lease, is refused.
        with pytest.raises(LoopLockedError, match=f"another loop runner \\({first.holder}\\)"):
            with lease(root, seconds=SECONDS):
                pass
    assert _released(root, first.holder)


def _take_over_right_after_the_next_read(monkeypatch, uri: str, other: Lease) -> None:
    """Interleave: right after the next read of the lease, ``other`` replaces what was read."""
    real_read = lease_mod._read
    calls = []

    def read_then_taken_over(read_uri: str):
        seen = real_read(read_uri)
        if not calls:
            calls.append(seen)
            assert lease_mod._swap(uri, seen.version, other.payload())
        return seen

    monkeypatch.setattr(lease_mod, "_read", read_then_taken_over)


def test_acquire_that_read_the_stale_lease_just_before_a_takeover_is_refused(root, monkeypatch):
    uri = _write_dead_lease(root, "dead-host:1:abc")
    other = Lease(uri, "other-host:2:def", SECONDS)
    _take_over_right_after_the_next_read(monkeypatch, uri, other)
    with pytest.raises(LoopLockedError, match="another loop runner \\(other-host:2:def\\)"):
        with lease(root, seconds=SECONDS):
            pass
    assert storage.read_json(uri)["holder"] == "other-host:2:def"


@pytest.mark.parametrize("step", ["renew", "release"])
def test_renewal_and_release_after_losing_leave_the_other_lease(root, monkeypatch, step):
    with lease(root, seconds=SECONDS) as held:
        other = Lease(held.uri, "other-host:2:def", SECONDS)
        # The other runner replaces the lease between this runner's read and its write.
        _take_over_right_after_the_next_read(monkeypatch, held.uri, other)
        if step == "renew":
            with pytest.raises(LoopLockedError, match="lost the lease .* to other-host:2:def"):
                held.renew()
            with pytest.raises(LoopLockedError, match="lost the lease"):
                held.renew()  # lost for good
        else:
            held.release()
    doc = storage.read_json(held.uri)  # released by neither this step nor the block's end
    assert doc["holder"] == "other-host:2:def" and "released" not in doc


def test_a_released_lease_is_taken_without_reporting_a_death(root):
    with lease(root, seconds=SECONDS) as first:
        pass
    assert _released(root, first.holder)
    with lease(root, seconds=SECONDS) as second:
        assert second.took_over_from is None
        assert storage.read_json(second.uri)["holder"] == second.holder


def test_renewals_from_several_threads_keep_the_lease(root):
    errors: queue.Queue = queue.Queue()

    def renew_often(held: Lease) -> None:
        for _ in range(10):
            try:
                held.renew()
            except Exception as exc:
                errors.put(exc)

    with lease(root, seconds=SECONDS) as held:
        threads = [threading.Thread(target=renew_often, args=(held,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors.empty(), errors.get()
        assert held.lost is None and storage.read_json(held.uri)["holder"] == held.holder
    assert _released(root, held.holder)
