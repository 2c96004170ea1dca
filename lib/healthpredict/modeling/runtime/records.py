"""Records (mappings keyed by Python field names, missing as ``None``) and the self-check probes.

The API validates requests into records; :func:`records_from_frame` converts a raw frame and
:func:`frame_from_records` goes back. :func:`self_check_records` builds, from the raw schema
alone, the records a compiled predictor is checked on against its pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.data.schema import COLUMNS, FEATURE_COLUMNS, ID_COLUMNS, MEDICATIONS, Column

Record = Mapping[str, Any]

_MODEL_INPUTS = tuple(c for c in FEATURE_COLUMNS if c not in ID_COLUMNS)
MED_KEYS = tuple(COLUMNS[m].python_name for m in MEDICATIONS)
# Share of missing values in a nullable column of the probes (the edge records add all-missing).
_PROBE_MISSING = 0.15


def frame_from_records(records: Sequence[Record]) -> pd.DataFrame:
    """Raw frame (original column names, no ids) of records keyed by Python field names."""
    data = {c: [r.get(COLUMNS[c].python_name) for r in records] for c in _MODEL_INPUTS}
    return pd.DataFrame(data)


def records_from_frame(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Records keyed by Python field names (missing as None) from a raw frame; target dropped."""
    cols = [c for c in FEATURE_COLUMNS if c in df.columns]
    out = []
    for row in df[cols].itertuples(index=False, name=None):
        out.append(
            {
                COLUMNS[c].python_name: None
                if _is_missing(v)
                else (v.item() if hasattr(v, "item") else v)
                for c, v in zip(cols, row, strict=True)
            }
        )
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


# --------------------------------------------------------------------------- self-check probes


def _icd9_codes(rng: np.random.Generator, n: int) -> list[str]:
    """ICD-9 codes as the raw file spells them, spread over every clinical group.

    Numeric codes 1-999 (with and without one or two decimals, ``250.xx`` diabetes among them),
    ``V`` and ``E`` codes: every group and every 3-digit category kind of
    :func:`healthpredict.modeling.features.diag_group` is reached.
    """
    out = []
    for kind, number, decimals in zip(
        rng.integers(0, 10, n), rng.integers(1, 1000, n), rng.integers(0, 100, n), strict=True
    ):
        if kind == 0:
            out.append(f"V{number % 92}" + (f".{decimals % 10}" if decimals % 2 else ""))
        elif kind == 1:
            out.append(f"E{800 + number % 200}" + (f".{decimals % 10}" if decimals % 2 else ""))
        elif kind == 2:
            out.append(f"250.{decimals:02d}" if decimals % 3 else "250")
        else:
            suffix = ("", f".{decimals % 10}", f".{decimals:02d}")[int(decimals % 3)]
            out.append(f"{number}{suffix}")
    return out


# Payer codes and specialties are open text in the schema (a pattern, no closed set): a few
# common ones from the UCI file, so known categories are hit as well as unseen ones.
_PAYERS = ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "OG", "PO", "DM", "WC", "OT", "ZZ")
_SPECIALTIES = (
    "InternalMedicine", "Emergency/Trauma", "Family/GeneralPractice", "Cardiology",
    "Surgery-General", "Nephrology", "Orthopedics", "Radiologist", "Pulmonology", "Psychiatry",
    "Urology", "ObstetricsandGynecology", "Surgery-Cardiovascular/Thoracic", "Gastroenterology",
    "Oncology", "Never-Seen",
)  # fmt: skip


def _probe_values(col: Column, rng: np.random.Generator, n: int) -> list[Any]:
    """``n`` values of one raw column within what the schema allows."""
    if col.kind == "code":
        values: list[Any] = _icd9_codes(rng, n)
    elif col.allowed is not None:
        values = [col.allowed[i] for i in rng.integers(0, len(col.allowed), n)]
        values = [v.item() if hasattr(v, "item") else v for v in values]
    elif col.kind == "int":
        # Half near the low end, where real counts live; half anywhere in the range.
        low, high = col.low or 0, col.high if col.high is not None else (col.low or 0) + 100
        near = rng.integers(low, min(high, low + 10) + 1, n)
        values = np.where(rng.random(n) < 0.5, near, rng.integers(low, high + 1, n)).tolist()
    else:
        pool = _PAYERS if col.name == "payer_code" else _SPECIALTIES
        values = [pool[i] for i in rng.integers(0, len(pool), n)]
    if col.nullable:
        values = [
            None if m else v for v, m in zip(values, rng.random(n) < _PROBE_MISSING, strict=True)
        ]
    return values


def _edge_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Missing, unseen and rare values, on copies of the first probe records."""
    edge = [dict(records[i]) for i in range(6)]
    for rec in edge[:2]:  # every nullable field missing
        rec.update({c.python_name: None for c in COLUMNS.values() if c.nullable})
    edge[2].update(
        medical_specialty="Zz-never-seen", payer_code="ZZ", diag_1="V57.1", diag_2="E888.9"
    )
    edge[3].update(diag_1="250.83", diag_2="0.5", diag_3="999", weight=">200", race="Asian")
    edge[4].update(admission_source_id=26, discharge_disposition_id=30, admission_type_id=8)
    edge[5].update({m: "Down" for m in MED_KEYS}, gender="Unknown/Invalid", age="[0-10)")
    return edge


def self_check_records(n: int = 200, seed: int = 20240917) -> list[dict[str, Any]]:
    """Probe records for the self-check, built from the raw schema alone, plus edge cases.

    Every model input column gets values from its allowed set or range (ICD-9 codes of every
    group, missing values where the schema allows them); six edge records add every nullable
    field missing, unseen and rare categories and extreme ids.

    Args:
        n: Number of probe records before the edge cases.
        seed: Seed of the (deterministic) choice of values.
    """
    rng = np.random.default_rng(seed)
    columns = {COLUMNS[c].python_name: _probe_values(COLUMNS[c], rng, n) for c in _MODEL_INPUTS}
    records = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    return records + _edge_records(records)
