"""The commit and dirty flag of the checkout that produced a run or a model: one way to ask."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from healthpredict.core.settings import project_root

# Images are built without .git: the build passes the commit in one of these.
COMMIT_VARIABLES = ("HP_GIT_COMMIT", "GIT_COMMIT")


def _git(root: str | os.PathLike, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_info(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout at ``root`` (changes under ``rendered/`` ignored).

    Args:
        root: The checkout (default: the project root).

    Returns:
        ``{"commit": sha or None, "dirty": bool or None}``; both None outside a git repository
        (or before the first commit, or without a git binary), unless ``HP_GIT_COMMIT`` or
        ``GIT_COMMIT`` names the commit.
    """
    root = Path(root) if root is not None else project_root()
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    if commit is None:
        named = next((os.environ[v] for v in COMMIT_VARIABLES if os.environ.get(v)), None)
        return {"commit": named, "dirty": None}
    # Run outputs are not code: regenerating the committed rendered/samples/ must not mark the
    # very runs that regenerate it as made from a modified checkout.
    status = _git(root, "status", "--porcelain", "--", ".", ":(exclude)rendered")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The commit of the checkout at ``root`` (default: the project root), else ``unknown``."""
    return git_info(root)["commit"] or "unknown"
