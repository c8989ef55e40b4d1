"""Type checks for config dataclasses: a value of the wrong type is a ConfigError, never a traceback.

TOML and ``key=value`` overrides give ints, floats, bools, strings, lists and tables; a typo such as
``lr=0.o1`` arrives as the string "0.o1". :func:`check_types` compares every field of a config
dataclass with its annotation, accepts an int where a float is expected, and
names the key, the value and the expected type otherwise. Values are kept as written (an int
where a float is expected stays an int), so stored configs keep their exact JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from fipgraph.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "a table", type(None): "nothing (leave the key out)"}


def _accepts(kind: Any, value: Any) -> tuple[bool, Any]:
    """(ok, coerced value) for one annotation; Any accepts everything."""
    if kind is Any:
        return True, value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            ok, coerced = _accepts(option, value)
            if ok:
                return True, coerced
        return False, value
    if origin is not None:  # list[str], dict[str, Any]: check the container, and list items
        if not isinstance(value, origin):
            return False, value
        if origin is list and typing.get_args(kind):
            item = typing.get_args(kind)[0]
            checked = [_accepts(item, v) for v in value]
            return all(ok for ok, _ in checked), [v for _, v in checked]
        return True, value
    if kind is float:  # TOML writes 1 for 1.0 (kept as written: stored configs compare equal either way);
        # bool is an int subclass but never a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is type(None):
        return value is None, value
    return isinstance(value, kind), value


def describe(kind: Any) -> str:
    """'a number', 'an integer or nothing (leave the key out)', 'a list of a string', ..."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(k) for k in typing.get_args(kind))
    if origin is list and typing.get_args(kind):
        item = typing.get_args(kind)[0]
        return "a list of lists" if typing.get_origin(item) is list else f"a list of {describe(item).split(' ', 1)[-1]}s"
    return _NAMES.get(origin or kind, getattr(kind, "__name__", str(kind)))


def check_types(obj: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """Check every field of dataclass ``obj`` against its annotation (list items included)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        ok, coerced = _accepts(hints[f.name], value)
        if not ok:
            raise ConfigError(f"{where + ': ' if where else ''}{f.name}={value!r} is {type(value).__name__}, expected "
                              f"{describe(hints[f.name])}; e.g. {f.name} = {_example(f, hints[f.name])}")
        setattr(obj, f.name, coerced)


def _example(f: dataclasses.Field, hint: Any) -> str:
    """The field's default as a TOML literal, for the fix in an error message."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "..."
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:  # an optional setting: show a value of its first real type
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        value = {int: 100, float: 0.5, str: "name", bool: True}.get(typing.get_origin(kinds[0]) or kinds[0], []) if kinds else "..."
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')


def field_defaults(cls: type) -> dict[str, Any]:
    """{field: default} for the fields of a dataclass that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out
