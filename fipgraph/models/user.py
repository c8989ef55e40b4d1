"""Models from the user's own code: import paths, entry points, and unwrapping DDP / torch.compile.

A model that fipgraph did not build is stored under the spec ``{"name": "package.module:QualName",
"kwargs": {...}}``: ``build_model`` imports that callable and calls it with the kwargs, in any process
that can import the package. The same spelling names a factory in a TOML ``[model]`` table. Installed
packages may also register builders under the ``fipgraph.models`` entry-point group.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.plugins import import_object, load_entry_point

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule, DDP / DataParallel


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside torch.compile / DistributedDataParallel / DataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def strip_wrapper_prefixes(state: dict) -> dict:
    """A state dict saved from a wrapped module (every key ``module.…`` or ``_orig_mod.…``) as the bare module's."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state, changed = {k[len(prefix):]: v for k, v in state.items()}, True
    return state


def import_path_of(cls: type) -> str:
    """``package.module:QualName`` of a class or function."""
    return f"{cls.__module__}:{cls.__qualname__}"


def user_spec(model: nn.Module, init: dict | None) -> dict:
    """The spec of an unregistered module: its class's import path, and its init arguments when known."""
    spec: dict[str, Any] = {"name": import_path_of(type(unwrap(model))), "kwargs": dict(init or {})}
    if init is None:
        spec["init"] = "unknown"  # build_model refuses and says how to pass them
    return spec


def is_import_path(name: str) -> bool:
    return ":" in name


def resolve_import_path(name: str, spec: dict) -> Callable[..., nn.Module]:
    """The callable a ``module:qualname`` spec names, or a ConfigError saying why it cannot be rebuilt."""
    module_name, _, qualname = name.partition(":")
    if spec.get("init") == "unknown":
        raise ConfigError(f"the stored model {name!r} was recorded without its init arguments, so it cannot be "
                          f"rebuilt here; build it yourself and call store.load_into(model, node), or record it with "
                          f"fipgraph.walk(..., model_kwargs={{...}}) / store.recorder(..., model_kwargs={{...}})")
    if module_name == "__main__" or "<locals>" in qualname:
        where = "in the script that was run (__main__)" if module_name == "__main__" else "inside a function"
        raise ConfigError(f"model {name!r} was defined {where}, which another process cannot import; move the class "
                          f"into an importable module, or build it yourself and call store.load_into(model, node)")
    target = import_object(name, "model")
    if not callable(target):
        raise ConfigError(f"model {name!r} is a {type(target).__name__}, not a class or function returning an nn.Module")
    return target


def entry_point_builder(name: str) -> Callable[..., nn.Module] | None:
    """A builder an installed package registered as ``[project.entry-points."fipgraph.models"] name = ...``."""
    return load_entry_point("fipgraph.models", name, "model")
