"""Helpers of the drift tests (a module of its own: every test folder has a conftest)."""

from __future__ import annotations


def write_batch(env, name: str, frame) -> str:
    """Write a raw batch CSV into the environment's folder; returns its path."""
    from healthpredict.core import storage

    return storage.write_csv(str(env.tmp / "batches" / f"{name}.csv"), frame)
