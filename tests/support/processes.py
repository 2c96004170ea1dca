"""Stopping what a test harness started: a process group, signalled as one."""

from __future__ import annotations

import contextlib
import os


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
