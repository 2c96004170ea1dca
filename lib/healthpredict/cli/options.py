"""Typer options built from the stage parameter models, so a setting is declared once.

``@stage_options(TrainParams)`` gives a command one ``--option`` per field of the model (named
after the parameter, with its default, help text and lower bound) and hands the command the
validated model; :func:`field_option` does the same for a single field.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, Optional

import typer
from pydantic import ValidationError

from healthpredict.core.stages import StageParams, minimum, user_fields, value_types

# The argument of a decorated command that receives the validated model.
PARAMS_ARGUMENT = "params"


def option_name(field_name: str) -> str:
    """The command-line spelling of a parameter (``n_trials`` -> ``--n-trials``)."""
    return "--" + field_name.replace("_", "-")


def option_type(annotation: Any) -> Any:
    """The type typer parses a field as: a str-or-list parameter becomes a repeatable option."""
    kinds = value_types(annotation)
    present = [k for k in kinds if k is not type(None)]
    lists = [k for k in present if typing.get_origin(k) is list]
    kind = lists[0] if lists else present[0]
    # typer understands typing.Optional, not every spelling of a union.
    return Optional[kind] if len(present) < len(kinds) else kind  # noqa: UP045


def field_option(
    model: type[StageParams],
    name: str,
    aliases: Collection[str] = (),
    required: bool = False,
) -> Any:
    """A ``typer.Option`` for one field of a model.

    Args:
        model: The stage (or loop) model.
        name: The field.
        aliases: Older spellings that keep working (e.g. ``--batch``).
        required: The command cannot run without it (the notebook's default is a placeholder).

    Returns:
        The option, to use as a parameter's default in a command's signature.
    """
    field = model.model_fields[name]
    default = ... if required else field.get_default(call_default_factory=True)
    bounds = {} if (bound := minimum(field)) is None else {"min": bound}
    return typer.Option(default, option_name(name), *aliases, help=field.description, **bounds)


def stage_options(
    model: type[StageParams],
    aliases: Mapping[str, Collection[str]] | None = None,
    required: Collection[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``f(params: Model, **other_options)`` with one option per model field.

    Args:
        model: The stage model whose fields become options (``run_dir`` excepted).
        aliases: Extra option spellings per field, e.g. ``{"new_data_path": ["--batch"]}``.
        required: Fields the command needs a value for.

    Returns:
        The decorator; the command's own options (``--force``) follow the model's.
    """
    fields = user_fields(model)
    aliases = aliases or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command)
        own = [
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)
            )
            for p in inspect.signature(command).parameters.values()
            if p.name != PARAMS_ARGUMENT
        ]
        generated = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field_option(model, name, aliases.get(name, ()), name in required),
                annotation=option_type(field.annotation),
            )
            for name, field in fields.items()
        ]

        @functools.wraps(command)
        def wrapper(**options: Any) -> Any:
            # click hands repeatable options over as tuples; the model wants lists.
            values = {name: options.pop(name) for name in fields}
            values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            try:
                params = model.model_validate(values)
            except ValidationError as exc:
                raise typer.BadParameter(str(exc)) from None
            return command(params, **options)

        signature = inspect.Signature([*generated, *own])
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return wrapper

    return decorate
