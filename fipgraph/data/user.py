"""Data from the user's own code: ``[data] source = "package.module:function"``, or a name an installed
package registers under the ``fipgraph.data`` entry-point group.

What the function is given: every key of the ``[data]`` table's ``kwargs`` as a keyword (a key it cannot
take is an error: the user wrote it), plus ``split``, ``seed``, ``head`` and ``test_size`` only where its
signature names them (or takes ``**kwargs``); those are fipgraph's own settings, which a function is free
to ignore, except that a split, seed or test_size set to other than its default and that the function cannot take
is refused rather than dropped silently (``head`` is not: the tasks' own label layout answers for it).

What it returns: a list with one item per task, in order: a :class:`~fipgraph.data.Task`, a task made by
``fipgraph.data.adapters.to_task``, or a ``(train, test)`` pair of anything ``to_task`` reads (DataLoaders,
Datasets, ``datasets.Dataset``, ``(x, y)`` tensors), converted by it and named task1, task2, ...
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from fipgraph.data.task import Task
from fipgraph.errors import ConfigError
from fipgraph.plugins import entry_point_names, import_object, load_entry_point

GROUP = "fipgraph.data"
OFFERED = ("split", "seed", "head", "test_size")  # fipgraph's settings, passed where the function takes them
UNSET = {"split": None, "seed": 0, "test_size": 0.2}  # set otherwise, a function that cannot take them is refused


def registered_sources() -> list[str]:
    """Data source names installed packages register under the ``fipgraph.data`` entry-point group."""
    return entry_point_names(GROUP)


def is_user_source(source: Any) -> bool:
    """An import path ``package.module:function`` or a registered entry-point name."""
    return isinstance(source, str) and (":" in source or source in registered_sources())


def resolve_source(source: str) -> Callable[..., Any]:
    """The function a user source names; ConfigError naming the source and the import error."""
    if ":" in source:
        return _callable(source, import_object(source, "data source"))
    return _callable(source, load_entry_point(GROUP, source, "data"))


def _callable(source: str, target: Any) -> Callable[..., Any]:
    if not callable(target):
        raise ConfigError(f"data source {source!r} is a {type(target).__name__}, not a function returning tasks")
    return target


def call_arguments(source: str, fn: Callable[..., Any], settings: dict, kwargs: dict) -> dict:
    """The keywords ``fn`` is called with (see the module docstring); ConfigError where it cannot take one."""
    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in takes and not open_ended]
    if unknown:
        raise ConfigError(f"data source {source!r} takes no argument {unknown} (its parameters: {takes}); "
                          f"remove them from [data] kwargs or add them to the function")
    args = dict(kwargs)
    for key in OFFERED:
        if key in kwargs:
            continue
        if key in takes or open_ended:
            args[key] = settings[key]
        elif key in UNSET and settings[key] != UNSET[key]:
            raise ConfigError(f"data.{key}={settings[key]!r} but data source {source!r} takes no {key!r} "
                              f"argument; remove data.{key}, or add a {key} parameter to the function")
    return args


def user_tasks(source: str, *, split: Any = None, seed: int = 0, head: str = "single", test_size: float = 0.2,
               **kwargs: Any) -> list[Task]:
    """Call the user's data function and check what it returned (see the module docstring)."""
    fn = resolve_source(source)
    args = call_arguments(source, fn, {"split": split, "seed": seed, "head": head, "test_size": test_size}, kwargs)
    return as_tasks(source, fn(**args))


def as_tasks(source: str, result: Any) -> list[Task]:
    """A list of Tasks from what a data function returned (Tasks, or (train, test) pairs)."""
    if not isinstance(result, (list, tuple)) or not result:
        raise ConfigError(f"data source {source!r} returned a {type(result).__name__}; return a non-empty list "
                          f"with one fipgraph.data.Task, or one (train, test) pair, per task")
    from fipgraph.data.adapters import SourceTask

    tasks = [item if isinstance(item, (Task, SourceTask)) else _pair_task(source, i, item)
             for i, item in enumerate(result)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"data source {source!r} returned tasks with repeated names {names}; queries choose a "
                          f"task by name (--task), so give each its own")
    return tasks


def _pair_task(source: str, i: int, item: Any) -> Any:
    from fipgraph.data.adapters import to_task

    if not (isinstance(item, tuple) and len(item) == 2):
        raise ConfigError(f"data source {source!r}: item {i} is a {type(item).__name__}; each item must be a "
                          f"fipgraph.data.Task or a (train, test) pair")
    return to_task(item[0], item[1], name=f"task{i + 1}")
