"""Errors of the notebook engine; each message says what went wrong and where to look."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from healthpredict.runs.result import RunResult


class NotebookError(Exception):
    """Base of the notebook engine's errors."""


class ParameterError(NotebookError, ValueError):
    """Parameters given to a notebook do not match its parameters cell (no kernel was started)."""


class NotebookRunError(NotebookError, RuntimeError):
    """A notebook run failed; its executed notebook, HTML and ``run.json`` were still written.

    Attributes:
        result: The failed run (status ``"failed"``), with provenance and paths.
        cell: Number of the failing cell (``In [n]``, else its index), or None.
        ename: Exception type raised in the kernel (or ``MissingScraps``, ...).
        evalue: Exception message.
    """

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result
        error = (result.provenance or {}).get("error") or {}
        self.cell = error.get("cell_number")
        self.ename = error.get("ename")
        self.evalue = error.get("evalue")
