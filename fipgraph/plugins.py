"""User code by name: ``package.module:qualname`` import paths and installed entry points.

One place for both, so a model factory and a data function that cannot be found fail alike: naming
the path and the import error, never with a bare traceback.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from fipgraph.errors import ConfigError


def import_object(path: str, what: str) -> Any:
    """The object ``package.module:qualname`` names; ConfigError naming ``what`` and the import error."""
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {path!r} cannot be imported ({type(exc).__name__}: {exc}); install the package "
                          f"that defines it, or check the spelling package.module:callable") from None
    return target


def entry_point_names(group: str) -> list[str]:
    """Names installed packages register under ``group``."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load_entry_point(group: str, name: str, what: str) -> Any | None:
    """The object registered as ``name`` in ``group``, or None; a plug-in that fails to load names itself."""
    for ep in entry_points(group=group):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:  # a broken plug-in must not crash the caller with its own traceback
                raise ConfigError(f"{what} entry point {name!r} ({ep.value}) failed to load "
                                  f"({type(exc).__name__}: {exc}); reinstall the package that registers it") from None
    return None
