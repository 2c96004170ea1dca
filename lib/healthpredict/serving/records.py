"""Request records validated from the one raw schema (:mod:`healthpredict.data.schema`).

The record type is built from ``RAW_COLUMNS`` at import, so a change of the schema changes the
API, its OpenAPI document and its error messages together:

- categories are enums (``Literal``), counts and id codes bounded integers, codes and free
  text patterned strings; JSON types are strict (``"5"``, ``5.5`` and ``true`` are not
  integers; ``5.0`` is, as in JSON Schema);
- nullable columns may be omitted or null, the others are required, ids are optional;
- the original name (``glyburide-metformin``) and its Python spelling (``glyburide_metformin``)
  are both accepted, but not both at once; any other field is an error (nothing is dropped);
- a key given twice in one JSON object is an error (JSON parsers silently keep the last value);
- ``NaN``, ``Infinity`` and numbers beyond the float range are reported on their field;
- the target ``readmitted`` is not an input.

Validated records are dicts keyed by Python field names, missing values absent or None, as
:mod:`healthpredict.modeling.runtime` expects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import (
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import to_json
from typing_extensions import TypedDict

from healthpredict.data.schema import ALIASES, COLUMNS, RAW_COLUMNS, TARGET, Column

INPUT_COLUMNS: tuple[Column, ...] = tuple(c for c in RAW_COLUMNS if c.name != TARGET)
_BY_PYTHON_NAME = {c.python_name: c for c in INPUT_COLUMNS}
_INT64_MAX = 2**63 - 1
_MAX_VALUE_CHARS = 200  # longer values are cut in error reports
_NON_JSON_NUMBER = (
    "{} is not a JSON number (NaN and Infinity are not valid JSON): send a number, or null "
    "where the field may be unknown"
)


class NonJsonNumber:
    """``NaN``, ``Infinity`` or ``-Infinity`` in a body: no JSON number, and no valid field value.

    The parser keeps the place of such a token instead of failing the whole body, so that the
    error names the field; no field type accepts this object.
    """

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return self.token

    __str__ = __repr__


def _whole_float(value: Any) -> Any:
    # JSON Schema counts 4.0 as an integer, so we do too; 4.5, "4" and true stay errors.
    return int(value) if type(value) is float and value.is_integer() else value


def _int(**bounds: int) -> Any:
    # One flat Annotated: nested ones would hide the bounds from the JSON schema.
    return Annotated[int, Strict(), Field(**bounds), BeforeValidator(_whole_float)]


def _base_type(col: Column) -> Any:
    if col.kind == "id":
        return _int(gt=0, le=_INT64_MAX)
    if col.kind == "int":
        if col.allowed is not None:
            lo, hi = min(col.allowed), max(col.allowed)
            if set(col.allowed) != set(range(lo, hi + 1)):
                return Annotated[Literal[tuple(col.allowed)], BeforeValidator(_whole_float)]
            return _int(ge=lo, le=hi)
        return _int(ge=col.low, le=col.high)
    if col.kind == "category":
        return Literal[tuple(col.allowed)]
    return Annotated[str, Strict(), Field(pattern=col.pattern)]


def expected(col: Column) -> str:
    """What a column accepts, in words, for error messages and field descriptions."""
    if col.kind == "id":
        text = "a positive integer (optional)"
    elif col.kind == "int" and col.allowed is not None:
        text = f"an integer code in [{min(col.allowed)}, {max(col.allowed)}]"
    elif col.kind == "int":
        text = f"an integer in [{col.low}, {col.high}]"
    elif col.kind == "category":
        text = "one of " + ", ".join(repr(v) for v in col.allowed)
    else:
        text = f"a string matching {col.pattern}"
    if col.nullable:
        text += ", or null / omitted when unknown"
    elif col.kind != "id":
        text += " (required)"
    return text


def _record_type() -> type:
    fields: dict[str, Any] = {}
    for col in INPUT_COLUMNS:
        optional = col.nullable or col.kind == "id"
        base = _base_type(col)
        if optional:
            base = base | None
        spelled = f" Also accepted as `{col.python_name}`." if col.python_name != col.name else ""
        ann = Annotated[
            base,
            Field(
                validation_alias=AliasChoices(col.name, col.python_name) if spelled else None,
                description=f"{col.description} Expected: {expected(col)}.{spelled}",
            ),
        ]
        fields[col.python_name] = NotRequired[ann] if optional else Required[ann]
    record = TypedDict("EncounterRecord", fields)  # type: ignore[operator]
    record.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
        extra="forbid",
        title="EncounterRecord",
        json_schema_extra={
            "description": (
                "One hospital encounter with the raw fields of the UCI Diabetes 130-US "
                "hospitals schema (the target `readmitted` is not an input)."
            )
        },
    )
    return record


EncounterRecord = _record_type()
RECORDS = TypeAdapter(list[EncounterRecord])


@dataclass
class RequestError(Exception):
    """A request the API refuses: HTTP status, a summary and (for 422) every problem."""

    status: int
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """JSON body of the error response."""
        return (
            {"detail": self.detail, "errors": self.errors}
            if self.errors
            else {"detail": self.detail}
        )


def _reported(value: Any) -> Any:
    """The value as an error report can show it: valid JSON, at most ~200 characters."""
    if isinstance(value, NonJsonNumber):
        return value.token
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # a number beyond the float range ("inf")
    if isinstance(value, str):
        return value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + "..."
    if isinstance(value, list | dict):
        try:
            text = to_json(value, fallback=str, inf_nan_mode="strings").decode()
        except ValueError:  # nested deeper than the serializer goes
            return f"<{type(value).__name__} nested too deeply to show>"
        if len(text) > _MAX_VALUE_CHARS:
            return text[:_MAX_VALUE_CHARS] + "..."
        return json.loads(text)  # plain JSON values, NaN markers as their token
    return value


def _problem(
    record: int | None, name: str | None, value: Any, expect: str, msg: str, kind: str
) -> dict:
    return {
        "record": record,
        "field": name,
        "value": _reported(value),
        "expected": expect,
        "message": msg,
        "type": kind,
    }


def _error_items(exc: ValidationError, items: list[Any], batch: bool) -> list[dict[str, Any]]:
    """One entry per offending field: record index, field, value given, what was expected."""
    out: list[dict[str, Any]] = []
    duplicated: set[tuple[int, str]] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for py, canonical in (
            (c.python_name, c.name) for c in INPUT_COLUMNS if c.python_name != c.name
        ):
            if py in item and canonical in item:
                duplicated.add((i, py))
                out.append(
                    _problem(
                        i if batch else None,
                        canonical,
                        {canonical: item[canonical], py: item[py]},
                        f"the field once, as {canonical!r} or {py!r}",
                        "the same field is given under both of its names",
                        "duplicate_field",
                    )
                )
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        index = loc[0] if loc and isinstance(loc[0], int) else None
        key = loc[1] if len(loc) > 1 else None
        kind = err["type"]
        if kind == "extra_forbidden" and (index, key) in duplicated:
            continue  # already reported as one duplicate_field problem
        record = index if batch else None
        if key is None:
            out.append(
                _problem(
                    record,
                    None,
                    err.get("input"),
                    "a JSON object (one encounter)",
                    err["msg"],
                    kind,
                )
            )
            continue
        key = str(key)
        col = COLUMNS.get(ALIASES.get(key, key)) or _BY_PYTHON_NAME.get(key)
        if kind == "extra_forbidden":
            if key == TARGET:
                expect = "no target: 'readmitted' is what the model predicts, not an input"
            else:
                expect = "a field of the raw encounter schema (see GET /docs); unknown fields are not ignored"
            out.append(_problem(record, key, err.get("input"), expect, "unknown field", kind))
        elif kind == "missing":
            name = col.name if col else key
            out.append(
                _problem(record, name, None, expected(col) if col else "", "field required", kind)
            )
        else:
            name = col.name if col else key
            value, msg = err.get("input"), err["msg"]
            if isinstance(value, NonJsonNumber):
                msg, kind = _NON_JSON_NUMBER.format(value), "json_invalid"
            elif isinstance(value, float) and not math.isfinite(value):
                msg, kind = (
                    "the number is beyond the float range (it reads as infinity)",
                    "json_invalid",
                )
            out.append(_problem(record, name, value, expected(col) if col else "", msg, kind))
    out.sort(key=lambda p: -1 if p["record"] is None else p["record"])
    return out


def _loads(body: bytes) -> tuple[Any, dict[int, dict[str, list[Any]]]]:
    """Parse a JSON body strictly; also return the keys given twice, per object (by ``id``).

    Raises:
        ValueError: Not UTF-8, not JSON, or nested too deeply.
    """
    duplicates: dict[int, dict[str, list[Any]]] = {}

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):  # the same key twice: collect its values, none is dropped
            seen: dict[str, list[Any]] = {}
            for key, value in pairs:
                seen.setdefault(key, []).append(value)
            duplicates[id(obj)] = {k: v for k, v in seen.items() if len(v) > 1}
        return obj

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 ({exc})") from None
    try:
        data = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=NonJsonNumber)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    return data, duplicates


def _duplicate_problems(
    items: list[Any], duplicates: dict[int, dict[str, list[Any]]], batch: bool
) -> list[dict[str, Any]]:
    """One problem per key given more than once in a record."""
    out = []
    for i, item in enumerate(items):
        for key, values in duplicates.get(id(item), {}).items() if isinstance(item, dict) else ():
            col = COLUMNS.get(ALIASES.get(key, key)) or _BY_PYTHON_NAME.get(key)
            out.append(
                _problem(
                    i if batch else None,
                    col.name if col else key,
                    values,
                    f"the field once per record{f' ({expected(col)})' if col else ''}",
                    f"the key {key!r} is given {len(values)} times in one record: which value "
                    "is meant is ambiguous (JSON parsers silently keep the last one)",
                    "duplicate_key",
                )
            )
    return out


def parse_records(body: bytes, max_records: int) -> tuple[list[dict[str, Any]], bool]:
    """Parse and validate a /predict body: one record (object) or a list of records (array).

    Args:
        body: Raw request body (JSON).
        max_records: Most records accepted in one request.

    Returns:
        The validated records (Python field names) and whether the body was a list.

    Raises:
        RequestError: 422 for a body that is not UTF-8 JSON, or for invalid records (a key
            given twice, NaN and Infinity included), listing every problem; 413 for more than
            ``max_records`` records.
    """
    try:
        data, duplicates = _loads(body)
    except ValueError as exc:
        raise RequestError(
            422,
            "the body is not valid JSON",
            [
                _problem(
                    None,
                    None,
                    None,
                    "a JSON object or an array of objects (UTF-8)",
                    str(exc),
                    "json_invalid",
                )
            ],
        ) from None
    if isinstance(data, dict):
        batch, items = False, [data]
    elif isinstance(data, list):
        batch, items = True, data
        if len(items) > max_records:
            raise RequestError(
                413,
                f"{len(items):,} records in one request; the limit is {max_records:,} (HP_SERVE_MAX_RECORDS)",
            )
        if not items:
            raise RequestError(
                422,
                "no records",
                [_problem(None, None, [], "at least one record", "the list is empty", "too_short")],
            )
    else:
        raise RequestError(
            422,
            "the body must be one record (object) or a list of records (array)",
            [
                _problem(
                    None,
                    None,
                    data,
                    "a JSON object or an array of objects",
                    "wrong JSON type",
                    "body_type",
                )
            ],
        )
    errors = _duplicate_problems(items, duplicates, batch) if duplicates else []
    try:
        records = RECORDS.validate_python(items)
    except ValidationError as exc:
        errors.extend(_error_items(exc, items, batch))
        errors.sort(key=lambda p: -1 if p["record"] is None else p["record"])
    if errors:
        raise RequestError(422, f"{len(errors)} problem(s) in the request", errors)
    return records, batch


def request_body_schema(max_records: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI schema of the /predict body and the component schemas it refers to."""
    body = TypeAdapter(
        EncounterRecord
        | Annotated[list[EncounterRecord], Field(min_length=1, max_length=max_records)]
    )
    schema = body.json_schema(ref_template="#/components/schemas/{model}")
    return {k: v for k, v in schema.items() if k != "$defs"}, schema.get("$defs", {})
