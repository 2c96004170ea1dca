"""Content-addressed re-use of successful runs, through ``index.json`` beside the runs.

The index maps re-use keys to run folders; it is a cache of the ``run.json`` files, so it is
rebuilt from them when missing and every hit is checked against its ``run.json`` before use.
Only ``succeeded`` records count: a ``running`` one (live, or left by a killed runner) and a
``failed`` one are never re-used, also when a forced run overwrites an indexed folder.

The index names run folders portably, like ``run.json`` (``<rendered>/<run>``), and a hit is
handed back with this machine's paths (:func:`healthpredict.runs.record.resolve_record`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from healthpredict.core import storage
from healthpredict.core.layout import RUN_JSON
from healthpredict.core.portable import portable, resolve_path
from healthpredict.runs.record import resolve_record

INDEX_NAME = "index.json"


def run_json_uris(rendered_dir: str) -> list[str]:
    """URIs of the ``run.json`` files of the runs kept under ``rendered_dir`` (any depth)."""
    return [u for u in storage.list_uris(rendered_dir) if u.rsplit("/", 1)[-1] == RUN_JSON]


def _entry(prov: dict[str, Any], rendered_dir: str) -> dict[str, Any]:
    run_dir = prov.get("run_dir")
    return {
        "key": prov.get("cache_key"),
        "run_dir": portable(run_dir, rendered=rendered_dir) if run_dir else run_dir,
        "notebook": prov.get("notebook"),
        "started_at": prov.get("started_at"),
    }


def rebuild_index(rendered_dir: str) -> dict[str, Any]:
    """Rebuild the index from the successful runs' ``run.json`` files and write it."""
    entries = []
    for uri in run_json_uris(rendered_dir):
        try:
            prov = storage.read_json(uri)
        except (storage.StorageError, ValueError):
            continue  # a half-written or foreign run.json is not a run we can re-use
        if isinstance(prov, dict) and prov.get("status") == "succeeded" and prov.get("cache_key"):
            entries.append(_entry(prov, rendered_dir))
    index = {"version": 1, "entries": sorted(entries, key=lambda e: e.get("started_at") or "")}
    storage.write_json(storage.join(rendered_dir, INDEX_NAME), index)
    return index


def load_index(rendered_dir: str) -> dict[str, Any]:
    """The index of ``rendered_dir``, rebuilt from the ``run.json`` files when missing or broken."""
    uri = storage.join(rendered_dir, INDEX_NAME)
    try:
        index = storage.read_json(uri)
        if isinstance(index, dict) and isinstance(index.get("entries"), list):
            return index
    except (storage.StorageError, ValueError):
        pass
    return rebuild_index(rendered_dir)


@contextlib.contextmanager
def _locked(rendered_dir: str) -> Iterator[None]:
    # Two runs finishing together must not lose each other's entry; S3 has no lock, and there
    # a lost entry only costs one re-execution.
    if storage.is_s3(rendered_dir):
        yield
        return
    Path(rendered_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(rendered_dir, ".index.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def add_to_index(rendered_dir: str, prov: dict[str, Any]) -> None:
    """Record a successful run under its re-use key."""
    with _locked(rendered_dir):
        index = load_index(rendered_dir)
        entry = _entry(prov, rendered_dir)
        entries = [  # an older index may name the same folder by its absolute path
            e
            for e in index["entries"]
            if portable(e.get("run_dir") or "", rendered=rendered_dir) != entry["run_dir"]
        ]
        entries.append(entry)
        index["entries"] = entries
        storage.write_json(storage.join(rendered_dir, INDEX_NAME), index)


def _same_location(a: str, b: str) -> bool:
    if storage.is_s3(a) or storage.is_s3(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def find_reusable(rendered_dir: str, key: str, run_dir: str | None = None) -> dict[str, Any] | None:
    """Provenance of the newest successful run with this key whose files are all still there.

    Args:
        rendered_dir: Folder holding the index.
        key: Re-use key of the run about to start.
        run_dir: When the caller asked for a specific run folder, only a run there counts.

    Returns:
        The ``run.json`` content of the run to re-use, with this machine's paths, or None.
    """
    index = load_index(rendered_dir)
    candidates = [
        {**e, "run_dir": resolve_path(e["run_dir"], rendered=rendered_dir)}
        for e in index["entries"]
        if e.get("key") == key and e.get("run_dir")
    ]
    if run_dir is not None:
        candidates = [e for e in candidates if _same_location(e["run_dir"], run_dir)]
    for entry in sorted(candidates, key=lambda e: e.get("started_at") or "", reverse=True):
        try:
            prov = storage.read_json(storage.join(entry["run_dir"], RUN_JSON))
        except (storage.StorageError, ValueError):
            continue
        if not isinstance(prov, dict):
            continue
        prov = resolve_record(prov, rendered=rendered_dir)
        if prov.get("status") != "succeeded" or prov.get("cache_key") != key:
            continue
        files = [prov.get("ipynb"), prov.get("html")]
        if all(f and storage.exists(f) for f in files):
            return prov
    return None
