"""What the commands print for a person: the console on stderr and the one-line error format."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def print_error(exc: BaseException) -> None:
    """An exception as ``error: <type>: <message>`` plus its notes, on stderr, unformatted."""
    lines = [f"error: {type(exc).__name__}: {exc}", *getattr(exc, "__notes__", [])]
    console.print("\n".join(lines), style="red", markup=False, highlight=False, soft_wrap=True)
