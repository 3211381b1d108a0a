"""Dagster run config generated from the lib's config dataclasses.

The dataclasses in `cpt_assets.lib` hold the defaults, validation and a one-line comment per field (written once);
this module turns one into a `dg.Config` class with the same fields, defaults and descriptions (the field comments),
so the Launchpad shows every knob with its help text: nested settings (cleaning rules, quality filter, dedup,
sampling) as nested config, `Literal` choices as Dagster enums. `to_dataclass` builds (and so validates) the
dataclass back from run config.
"""

import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing
from typing import Any, TypeVar

import dagster as dg
import pydantic

T = TypeVar("T")


@functools.cache
def field_comments(dataclass_type: type) -> dict[str, str]:
    """Map field name -> the comment after it in the class source (continuation comment lines appended)."""
    try:
        source = inspect.getsource(dataclass_type)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(dataclass_type)}
    comments: dict[str, str] = {}
    current: str | None = None
    line_has_code: dict[int, bool] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for index, token in enumerate(tokens):
        if token.type == tokenize.NAME and token.start[1] == 4 and token.string in names:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following.string == ":":
                current = token.string
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            line_has_code[token.start[0]] = True
        if token.type == tokenize.COMMENT and current is not None:
            text = token.string.lstrip("#").strip()
            own_line = not line_has_code.get(token.start[0], False)
            if not own_line or current in comments:
                comments[current] = f"{comments[current]} {text}".strip() if current in comments else text
        if token.type == tokenize.NAME and token.start[1] == 4 and token.string not in names:
            current = None  # a method or another statement: continuation comments stop
    return comments


def _config_type(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return hint  # Dagster shows a Literal as an enum (a drop-down in the Launchpad)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return list[_config_type(args[0])] if args else list[str]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _config_type(args[0]) | None
    return hint


def _nested_dataclass(hint: Any) -> tuple[type | None, bool]:
    """The dataclass a field holds (also inside `X | None`), and whether None is allowed."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            return args[0], True
    return None, False


def config_class(dataclass_type: type, name: str | None = None) -> type[dg.Config]:
    """A `dg.Config` subclass mirroring `dataclass_type`'s fields, defaults and field comments, nested included."""
    hints = typing.get_type_hints(dataclass_type)
    comments = field_comments(dataclass_type)
    definitions: dict[str, Any] = {}
    for field in dataclasses.fields(dataclass_type):
        if not field.init:
            continue
        description = comments.get(field.name) or field.name.replace("_", " ")
        hint = hints[field.name]
        nested_type, optional = _nested_dataclass(hint)
        if nested_type is not None:
            nested = config_class(nested_type, f"{name or dataclass_type.__name__}_{field.name}")
            has_default = field.default is None
            kind: Any = nested | None if optional else nested
            default = (
                pydantic.Field(default=None, description=description)
                if has_default
                else pydantic.Field(default_factory=nested, description=description)
            )
            definitions[field.name] = (kind, default)
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = ...
        if isinstance(default, tuple):
            default = list(default)
        definitions[field.name] = (_config_type(hint), pydantic.Field(default=default, description=description))
    return pydantic.create_model(
        name or f"{dataclass_type.__name__}Run",
        __base__=dg.Config,
        __doc__=(dataclass_type.__doc__ or "").strip().splitlines()[0] if dataclass_type.__doc__ else None,
        **definitions,
    )


def to_dataclass(config: Any, dataclass_type: type[T]) -> T:
    """Build (and so validate) the lib dataclass from run config; lists become tuples where the field wants one."""
    hints = typing.get_type_hints(dataclass_type)
    values = {}
    for field in dataclasses.fields(dataclass_type):  # pyright: ignore[reportArgumentType]  # T is a dataclass
        if not field.init or not hasattr(config, field.name):
            continue
        value = getattr(config, field.name)
        hint = hints[field.name]
        nested_type, _ = _nested_dataclass(hint)
        if nested_type is not None:
            value = None if value is None else to_dataclass(value, nested_type)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[field.name] = value
    return dataclass_type(**values)
