"""Scraps: named values a notebook records for whoever runs it (scrapbook's on-disk format).

Inside a notebook, :func:`record` writes a hidden ``display_data`` output with the mimetype
``application/scrapbook.scrap.json+json``; outside, :func:`read_scraps` reads them back from the
executed ``.ipynb`` (a local path or ``s3://`` URI). The format is scrapbook's, so
``scrapbook.read_notebook(path).scraps`` reads ours too, but this module does not need scrapbook
(unmaintained since 2021, and it refuses ``numpy.bool_``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from healthpredict.core import storage

SCRAP_MIMETYPE = "application/scrapbook.scrap.json+json"
# scrapbook's payload schema forbids a null value, and one such output makes its reader fail
# on the whole notebook; None values therefore go under a mimetype only this module reads.
NULL_SCRAP_MIMETYPE = "application/x-healthpredict.scrap.null+json"
_SCRAP_PREFIXES = ("application/scrapbook.scrap.", NULL_SCRAP_MIMETYPE)


def to_jsonable(value: Any) -> Any:
    """Convert a value to plain JSON types (numpy/pandas scalars, arrays, paths, containers).

    Non-finite floats (NaN, inf) and missing markers (``pd.NA``, ``NaT``) become ``None``.

    Args:
        value: Any value a notebook may want to record.

    Returns:
        The value built from ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.

    Raises:
        TypeError: The value has no JSON representation (the message names its type).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return to_jsonable(float(value))
    module = type(value).__module__.split(".")[0]
    type_name = type(value).__name__
    # Duck-typed so that recording a scrap never imports numpy or pandas by itself.
    if type_name in ("NAType", "NaTType"):
        return None
    if module == "pandas":
        if hasattr(value, "isoformat"):  # Timestamp
            return value.isoformat()
        if type_name == "Timedelta":
            return value.total_seconds()
        if hasattr(value, "to_dict"):  # Series / DataFrame
            return to_jsonable(value.to_dict())
    if module == "numpy" and hasattr(value, "tolist"):
        if type_name == "datetime64":
            return str(value)
        return to_jsonable(value.tolist())
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot record a value of type {type(value).__module__}.{type_name} as JSON")


def record(name: str, value: Any) -> Any:
    """Record a named value in the running notebook (read later with :func:`read_scraps`).

    The output is scrapbook's (``scrapbook.read_notebook(path).scraps`` reads it), except for
    a ``None`` value, which scrapbook cannot represent: only :func:`read_scraps` sees those.

    Args:
        name: Scrap name; recording the same name again overrides the earlier value.
        value: Value to record; made JSON-safe with :func:`to_jsonable`.

    Returns:
        The JSON-safe value that was recorded.

    Raises:
        TypeError: ``name`` is not a non-empty string or ``value`` is not JSON-representable.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a scrap name must be a non-empty string, got {name!r}")
    try:
        data = to_jsonable(value)
    except TypeError as exc:
        raise TypeError(f"scrap {name!r}: {exc}") from None
    # IPython costs ~0.3 s to import (measured): only inside a notebook kernel
    from IPython.display import display

    payload = {"name": name, "data": data, "encoder": "json", "version": 1}
    # raw=True hands the mimebundle to the frontend as is; scrapbook's own glue() does the same.
    mimetype = SCRAP_MIMETYPE if data is not None else NULL_SCRAP_MIMETYPE
    display(
        {mimetype: payload},
        metadata={"scrapbook": {"name": name, "data": True, "display": False}},
        raw=True,
    )
    return data


def scraps_from_notebook(nb: Mapping[str, Any]) -> dict[str, Any]:
    """Scraps of an already-loaded notebook (a dict or ``nbformat.NotebookNode``); last wins."""
    scraps: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            for mimetype, payload in (output.get("data") or {}).items():
                if not mimetype.startswith(_SCRAP_PREFIXES) or not isinstance(payload, Mapping):
                    continue
                name = payload.get("name")
                if isinstance(name, str):
                    scraps[name] = payload.get("data")
    return scraps


def read_scraps(notebook: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read the scraps recorded in an executed notebook.

    Args:
        notebook: Local path or ``s3://`` URI of an ``.ipynb``, or a loaded notebook.

    Returns:
        Scrap name -> value, in recording order; a repeated name keeps its last value.
    """
    if isinstance(notebook, Mapping):
        return scraps_from_notebook(notebook)

    return scraps_from_notebook(json.loads(storage.read_bytes(notebook)))
