"""Dagster run config generated from the lib's config dataclasses.

The dataclasses in `cpt_assets.lib` hold the defaults and validation (written once); this module turns one into a
`dg.Config` class with the same fields and defaults, so the Launchpad shows every knob, and back again.
"""

import dataclasses
import types
import typing
from typing import Any, TypeVar

import dagster as dg
import pydantic

T = TypeVar("T")


def _config_type(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return str
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return list[_config_type(args[0])] if args else list[str]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _config_type(args[0]) | None
    return hint


def config_class(dataclass_type: type, name: str | None = None) -> type[dg.Config]:
    """A `dg.Config` subclass mirroring `dataclass_type`'s fields, defaults and field comments."""
    hints = typing.get_type_hints(dataclass_type)
    definitions: dict[str, Any] = {}
    for field in dataclasses.fields(dataclass_type):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = ...
        if dataclasses.is_dataclass(default):
            continue  # nested settings (e.g. cleaning rules) keep their library defaults
        if isinstance(default, tuple):
            default = list(default)
        definitions[field.name] = (_config_type(hints[field.name]), pydantic.Field(default=default))
    return pydantic.create_model(name or f"{dataclass_type.__name__}Run", __base__=dg.Config, **definitions)


def to_dataclass(config: dg.Config, dataclass_type: type[T]) -> T:
    """Build (and so validate) the lib dataclass from run config; lists become tuples where the field wants one."""
    hints = typing.get_type_hints(dataclass_type)
    values = {}
    for field in dataclasses.fields(dataclass_type):
        if not field.init or not hasattr(config, field.name):
            continue
        value = getattr(config, field.name)
        if isinstance(value, list) and typing.get_origin(hints[field.name]) is tuple:
            value = tuple(value)
        values[field.name] = value
    return dataclass_type(**values)
