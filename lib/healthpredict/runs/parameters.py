"""The parameters of a notebook: check given ones before any kernel starts.

A pipeline notebook's parameters are declared by its stage model
(:mod:`healthpredict.core.stages`); any other notebook (a test fixture, a user's own) by its
parameters cell, simple assignments ``name = literal  # what it means`` parsed with :mod:`ast`
(never executed). Either way a typo or a wrong type fails in milliseconds, with a message listing
what the notebook accepts, instead of after a kernel has started.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from healthpredict.core.stages import (
    RUN_DIR_PARAMETER,
    StageParams,
    stage_model,
    user_fields,
    value_types,
)
from healthpredict.runs.errors import ParameterError
from healthpredict.runs.scraps import to_jsonable

PARAMETERS_TAG = "parameters"


@dataclass(frozen=True)
class Parameter:
    """One declared parameter: its name, default, trailing comment and line in the cell."""

    name: str
    default: Any
    comment: str
    line: int

    def describe(self) -> str:
        """One line ``name = default  # comment`` for error messages and ``--help`` texts."""
        text = f"{self.name} = {self.default!r}"
        return f"{text}  # {self.comment}" if self.comment else text


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - ast.parse reports it first
        pass
    return comments


def parse_parameters_source(source: str, where: str = "parameters cell") -> list[Parameter]:
    """Parse the source of a parameters cell.

    Args:
        source: Python source of the cell.
        where: Label used in error messages (e.g. the notebook path).

    Returns:
        The declared parameters, in cell order.

    Raises:
        ParameterError: The cell is not valid Python, or holds something other than
            ``name = literal`` assignments.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParameterError(f"{where}: line {exc.lineno}: invalid Python: {exc.msg}") from None
    comments = _comments_by_line(source)
    params: list[Parameter] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring-like string is harmless
        else:
            raise ParameterError(
                f"{where}: line {node.lineno}: only `name = literal  # comment` assignments "
                "belong in a parameters cell"
            )
        if not isinstance(target, ast.Name):
            raise ParameterError(f"{where}: line {node.lineno}: assign to a plain name")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise ParameterError(
                f"{where}: line {node.lineno}: the default of {target.id!r} must be a literal "
                f"(number, string, bool, None, list or dict), not `{ast.unparse(value)}`"
            ) from None
        end = node.end_lineno or node.lineno
        comment = comments.get(end) or comments.get(node.lineno, "")
        params.append(Parameter(target.id, default, comment, node.lineno))
    return params


def find_parameters_cell(nb: Mapping[str, Any]) -> int | None:
    """Index of the cell tagged ``parameters`` in a notebook, or None."""
    for index, cell in enumerate(nb.get("cells", [])):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in tags:
            return index
    return None


def parse_parameters(nb: Mapping[str, Any], where: str = "notebook") -> list[Parameter]:
    """Parse the parameters cell of a loaded notebook.

    Args:
        nb: Notebook (``jupytext.read`` result or dict).
        where: Label used in error messages (e.g. the notebook path).

    Returns:
        The declared parameters, in cell order.

    Raises:
        ParameterError: There is no code cell tagged ``parameters``, or it cannot be parsed.
    """
    index = find_parameters_cell(nb)
    if index is None:
        raise ParameterError(
            f'{where}: no parameters cell; tag one code cell with `# %% tags=["parameters"]` '
            "and declare every parameter there as `name = default  # comment`"
        )
    source = nb["cells"][index].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return parse_parameters_source(source, where=f"{where}: parameters cell")


def describe_parameters(params: list[Parameter]) -> str:
    """Indented listing of parameters with defaults and comments, one per line."""
    if not params:
        return "  (none)"
    return "\n".join(f"  {p.describe()}" for p in params)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):  # before int: bool is an int subclass
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def merge_parameters(
    declared: list[Parameter], given: Mapping[str, Any] | None, where: str = "notebook"
) -> dict[str, Any]:
    """Check given parameters against the declared ones and merge them over the defaults.

    Rules: every name must be declared; the value must have the default's type (an int is fine
    for a float, anything is fine for a ``None`` default, a list/dict default needs a list/dict);
    values are made JSON-safe first (paths become strings, numpy scalars Python numbers).

    Args:
        declared: Parameters of the notebook (:func:`parse_parameters`).
        given: Values to override (None means all defaults).
        where: Label used in error messages.

    Returns:
        Every declared parameter with its effective value, in declaration order.

    Raises:
        ParameterError: Unknown names or wrong types; the message lists them all, followed by
            the valid parameters with their defaults and comments.
    """
    by_name = {p.name: p for p in declared}
    merged = {p.name: p.default for p in declared}
    problems: list[str] = []
    for name, value in (given or {}).items():
        param = by_name.get(name)
        if param is None:
            problems.append(f"unknown parameter {name!r}")
            continue
        try:
            # Parameters travel as JSON (papermill's injected cell, run.json): numpy scalars,
            # paths and tuples become their plain counterparts before the type check.
            value = to_jsonable(value)
        except TypeError as exc:
            problems.append(f"parameter {name!r}: {exc}")
            continue
        if not _type_ok(param.default, value):
            problems.append(
                f"parameter {name!r} must be {_type_name(param.default)} "
                f"(default {param.default!r}), got {_type_name(value)} {value!r}"
            )
            continue
        if isinstance(param.default, float) and isinstance(value, int):
            value = float(value)
        merged[name] = value
    if problems:
        raise ParameterError(
            f"{where}: "
            + "; ".join(problems)
            + "\nvalid parameters:\n"
            + describe_parameters([p for p in declared if p.name != RUN_DIR_PARAMETER])
        )
    return merged


def check_parameters(
    nb: Mapping[str, Any], given: Mapping[str, Any] | None, *, notebook: str, where: str
) -> dict[str, Any]:
    """Check given parameters and merge them over the defaults, before any kernel starts.

    A pipeline notebook (one with a stage model) is checked against its model; any other
    notebook against its parameters cell (:func:`merge_parameters`). The cell is parsed in both
    cases: papermill needs it to inject the values after.

    Args:
        nb: The loaded notebook.
        given: Values to override (None means all defaults).
        notebook: The notebook's name (file stem), which selects the stage model.
        where: Label used in error messages (e.g. the notebook path).

    Returns:
        Every declared parameter with its effective value, in declaration order.

    Raises:
        ParameterError: No parameters cell, unknown names or wrong values; the message lists
            them all, followed by the valid parameters with their defaults and help texts.
    """
    declared = parse_parameters(nb, where=where)
    model = stage_model(notebook)
    if model is None:
        return merge_parameters(declared, given, where=where)
    return validate_stage_parameters(model, given, where=where)


def model_parameters(model: type[StageParams]) -> list[Parameter]:
    """A stage model's fields as :class:`Parameter` objects (help text as the comment)."""
    return [
        Parameter(name, field.get_default(call_default_factory=True), field.description or "", 0)
        for name, field in user_fields(model).items()
    ]


def _accepted_types(annotation: Any) -> str:
    kinds = value_types(annotation)
    return " or ".join("None" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)


def validate_stage_parameters(
    model: type[StageParams], given: Mapping[str, Any] | None, where: str = "notebook"
) -> dict[str, Any]:
    """Check given parameters with a stage model and merge them over its defaults.

    Args:
        model: The notebook's stage model.
        given: Values to override (None means all defaults); made JSON-safe first.
        where: Label used in error messages.

    Returns:
        Every field of the model with its effective value (JSON-safe), in declaration order.

    Raises:
        ParameterError: Unknown names or values the model rejects, all of them in one message.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, value in (given or {}).items():
        if name not in model.model_fields:
            problems.append(f"unknown parameter {name!r}")
            continue
        try:
            values[name] = to_jsonable(value)
        except TypeError as exc:
            problems.append(f"parameter {name!r}: {exc}")
    try:
        merged = model.model_validate(values).model_dump(mode="json")
    except ValidationError as exc:
        merged = {}
        rejected: dict[str, list[dict[str, Any]]] = {}
        for error in exc.errors():
            rejected.setdefault(str(error["loc"][0]), []).append(error)
        for name, errors in rejected.items():
            problems.append(_rejection(name, model.model_fields[name], values[name], errors))
    if problems:
        raise ParameterError(
            f"{where}: "
            + "; ".join(problems)
            + "\nvalid parameters:\n"
            + describe_parameters(model_parameters(model))
        )
    return merged


def _rejection(name: str, field: FieldInfo, value: Any, errors: list[dict[str, Any]]) -> str:
    """``parameter 'x' must be <what> (default d), got <type> <value>`` for pydantic's errors."""
    # A bound (ge=1) says more than the type list; type errors name each member of a union.
    bounds = [e["msg"] for e in errors if not e["type"].endswith("_type")]
    expected = (
        bounds[0].removeprefix("Input should be ") if bounds else _accepted_types(field.annotation)
    )
    return (
        f"parameter {name!r} must be {expected} (default {field.default!r}), "
        f"got {_type_name(value)} {value!r}"
    )
