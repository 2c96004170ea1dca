"""Scrap values and the reader (the kernel round trip is in test_runner.py)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from healthpredict.core import storage
from healthpredict.runs.scraps import (
    NULL_SCRAP_MIMETYPE,
    SCRAP_MIMETYPE,
    read_scraps,
    record,
    to_jsonable,
)


def test_to_jsonable_converts_numpy_pandas_and_paths():
    value = {
        "i": np.int64(3),
        "f": np.float32(0.25),
        "b": np.bool_(True),
        "arr": np.array([[1, 2], [3, 4]]),
        "nan": float("nan"),
        "npnan": np.float64("nan"),
        "inf": float("inf"),
        "path": Path("/a/b"),
        "ts": pd.Timestamp("2024-01-02T03:04:05"),
        "na": pd.NA,
        "nat": pd.NaT,
        "series": pd.Series([1, 2], index=["x", "y"]),
        "tuple": (1, np.int8(2)),
        "date": dt.date(2024, 1, 2),
        "dec": decimal.Decimal("1.5"),
        7: "int key",
    }
    out = to_jsonable(value)
    assert out == {
        "i": 3,
        "f": 0.25,
        "b": True,
        "arr": [[1, 2], [3, 4]],
        "nan": None,
        "npnan": None,
        "inf": None,
        "path": "/a/b",
        "ts": "2024-01-02T03:04:05",
        "na": None,
        "nat": None,
        "series": {"x": 1, "y": 2},
        "tuple": [1, 2],
        "date": "2024-01-02",
        "dec": 1.5,
        "7": "int key",
    }
    assert type(out["b"]) is bool and type(out["i"]) is int
    json.dumps(out, allow_nan=False)


def test_record_rejects_bad_names_and_values():
    with pytest.raises(TypeError, match="non-empty string"):
        record("", 1)
    with pytest.raises(TypeError, match="scrap 'x': cannot record a value of type"):
        record("x", object())


def _nb_with_outputs(*outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("pass")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data) for data in outputs]
    return nbformat.v4.new_notebook(cells=[cell])


def _scrap(name, data):
    mimetype = SCRAP_MIMETYPE if data is not None else NULL_SCRAP_MIMETYPE
    return {mimetype: {"name": name, "data": data, "encoder": "json", "version": 1}}


def test_read_scraps_last_value_wins_and_ignores_other_outputs(tmp_path):
    nb = _nb_with_outputs(
        _scrap("a", 1),
        {"text/plain": "hello"},
        _scrap("b", {"k": [1, 2]}),
        _scrap("a", 2),
        _scrap("c", None),
    )
    assert read_scraps(nb) == {"a": 2, "b": {"k": [1, 2]}, "c": None}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert read_scraps(path) == read_scraps(str(path)) == {"a": 2, "b": {"k": [1, 2]}, "c": None}


def test_read_scraps_from_s3(hp_env, s3_bucket):
    nb = _nb_with_outputs(_scrap("drift_status", "NO_DRIFT"))
    uri = storage.join(s3_bucket, "runs", "x", "nb.ipynb")
    storage.write_text(uri, nbformat.writes(nb))
    assert read_scraps(uri) == {"drift_status": "NO_DRIFT"}
