"""Paths as records write them: the same text on every machine, and back to real paths.

Run records (``run.json``), data manifests, MLflow params and the gallery name files of this
machine. :func:`portable` writes a local absolute path

- under the storage root as ``<storage>/rel``,
- under the rendered folder as ``<rendered>/rel``,
- under the repository (the checkout) relative to it (``notebooks/01_eda.py``),
- under the home folder as ``~/rel`` (the download cache),

choosing the deepest of these folders that holds the path (the default ``./var`` storage lies
inside the repository: its files are ``<storage>/...``). ``s3://`` URIs, URLs and relative text
are left alone, and so are other absolute paths (a ``--run-dir`` or data file the user put
elsewhere: rewriting it would make it unreadable; the product's own outputs never lie there).
The same rewrite applies to paths inside free text (an error message), as a whole path only.

:func:`resolve` is the inverse for the tokens and ``~``, against this machine's folders (or
the ones given); :func:`resolve_path` also makes a repository-relative path absolute. Only
the records are portable: a notebook still executes with absolute paths (its kernel runs in
``notebooks/``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from healthpredict.core.settings import get_settings, project_root

STORAGE = "<storage>"
RENDERED = "<rendered>"
HOME = "~"
# A root matches as a whole path: not inside a longer name (/x/var vs /x/var2, /y/x/var), but
# after a URI's scheme (file:///x/var/...) or any punctuation (quotes, '=', parentheses).
_BEFORE = r"(?:(?<=://)|(?<![\w.~/-]))"
_AFTER = r"(?![\w.-])"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, http://, models:/, sqlite:///
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\data: a Windows path, absolute where it was made


def _is_uri(text: str) -> bool:
    return bool(_URI.match(text))


def _variants(root: str | os.PathLike | None) -> list[str]:
    """The spellings of a local folder a path may start with (as given, and with links resolved)."""
    if root is None or _is_uri(str(root)):
        return []
    path = os.path.abspath(os.path.expanduser(str(root)))
    found = {path, os.path.realpath(path)}
    return sorted(p for p in found if p != os.sep)  # "/" holds everything: no root


@lru_cache(maxsize=16)
def _table(storage: str | None, rendered: str | None, repo: str, home: str | None):
    """Patterns and tokens of the roots, longest first (the deepest root wins); repo spellings."""
    pairs = [(v, STORAGE) for v in _variants(storage)]
    pairs += [(v, RENDERED) for v in _variants(rendered)]
    pairs += [(v, "") for v in _variants(repo)]
    pairs += [(v, HOME) for v in _variants(home)]
    pairs.sort(key=lambda pair: len(pair[0]), reverse=True)  # stable: storage before rendered
    table = []
    for prefix, token in pairs:
        if token:
            table.append((re.compile(_BEFORE + re.escape(prefix) + _AFTER), token))
        else:  # the repository: the path becomes relative to it, without a leading slash
            table.append((re.compile(_BEFORE + re.escape(prefix) + "/"), ""))
    return tuple(table), tuple(v for v in _variants(repo))


@lru_cache(maxsize=1)
def _fixed_roots() -> tuple[str, str | None]:
    """The repository and the home folder: the same for the whole process."""
    home = os.path.expanduser("~")
    return str(project_root()), None if home == "~" else home


def _roots(storage: str | None, rendered: str | None) -> tuple[str, str, str, str | None]:
    settings = get_settings()
    return (
        settings.storage if storage is None else str(storage),
        settings.rendered_dir if rendered is None else str(rendered),
        *_fixed_roots(),
    )


def portable(text: str, *, storage: str | None = None, rendered: str | None = None) -> str:
    """The portable form of a path, or of free text naming paths (see the module docstring).

    Args:
        text: A path, URI or any text.
        storage: Storage root (default: the ``storage`` setting).
        rendered: Rendered folder (default: the ``rendered_dir`` setting).

    Returns:
        ``text`` with each local path under a known folder written relative to it.
    """
    if not isinstance(text, str) or not text:
        return text
    table, repo = _table(*_roots(storage, rendered))
    if text.startswith("/") and "\n" not in text:
        normal = os.path.normpath(text)  # a whole path: /x/./y and /x//y name /x/y
        if normal in repo:
            return "."
        if not any(c.isspace() for c in text):  # not free text: "/x/y: no such file"
            text = normal
    for pattern, token in table:
        text = pattern.sub(token, text)
    return text


def resolve(text: str, *, storage: str | None = None, rendered: str | None = None) -> str:
    """This machine's form of :func:`portable`'s tokens and of a leading ``~``.

    ``<storage>`` and ``<rendered>`` are replaced wherever they stand (a storage on S3 gives
    ``s3://`` URIs); relative text is left as it is (see :func:`resolve_path`).

    Args:
        text: What a record holds.
        storage: Storage root (default: the ``storage`` setting).
        rendered: Rendered folder the record was read from (default: the ``rendered_dir``
            setting); give it when reading records of another folder (committed samples).
    """
    if not isinstance(text, str) or not text:
        return text
    if text == HOME or text.startswith(HOME + "/"):
        return os.path.expanduser(text)
    if "<" not in text:
        return text
    storage_root, rendered_root, _, _ = _roots(storage, rendered)
    for token, root in ((STORAGE, storage_root), (RENDERED, rendered_root)):
        text = text.replace(token, root.rstrip("/"))
    return text


def resolve_path(text: str, *, storage: str | None = None, rendered: str | None = None) -> str:
    """:func:`resolve`, then a relative local path made absolute against the repository."""
    text = resolve(text, storage=storage, rendered=rendered)
    if not isinstance(text, str) or not text or _is_uri(text) or _DRIVE.match(text):
        return text
    if os.path.isabs(text):
        return text
    return os.path.normpath(os.path.join(project_root(), text))


def portable_tree(obj: Any, *, storage: str | None = None, rendered: str | None = None) -> Any:
    """A copy of a JSON-like value with :func:`portable` applied to every string and key."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return portable(value, storage=storage, rendered=rendered)
        if isinstance(value, Mapping):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(obj)


def resolve_tree(obj: Any, *, storage: str | None = None, rendered: str | None = None) -> Any:
    """A copy of a JSON-like value with :func:`resolve` applied to every string and key."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return resolve(value, storage=storage, rendered=rendered)
        if isinstance(value, Mapping):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(obj)


def portable_notebook(nb: Any) -> Any:
    """A copy of an executed notebook for display: portable outputs and injected parameters.

    Pictures (``image/*``) are left alone; the code cells other than papermill's injected
    parameters are shown as written.
    """
    shown = copy.deepcopy(nb)
    for cell in shown["cells"]:
        if "injected-parameters" in ((cell.get("metadata") or {}).get("tags") or []):
            cell["source"] = portable_tree(cell["source"])
        for output in cell.get("outputs") or []:
            for key in ("text", "evalue", "traceback"):
                if key in output:
                    output[key] = portable_tree(output[key])
            data = output.get("data") or {}
            for mimetype in [m for m in data if not m.startswith("image/")]:
                data[mimetype] = portable_tree(data[mimetype])
    return shown
