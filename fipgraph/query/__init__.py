"""Readers: questions asked of the stored networks (PCA, evaluation, selection, ensembles, geometry).

Names are imported on first use: `select` and `pareto` need only the catalog, while evaluation,
PCA and ensembles pull in torch, so a command that only selects does not pay for them.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "Ensemble": "ensemble", "ensemble": "ensemble", "load_ensemble": "ensemble",
    "evaluate": "evaluate", "perplexity": "evaluate",
    "branches": "graph", "lineage": "graph", "path_between": "graph",
    "interpolate": "interpolate",
    "NotFittedError": "pca", "WeightPCA": "pca",
    "pareto": "select", "select": "select", "select_sql": "select",
    "recorded_data": "recorded", "recorded_tasks": "recorded",
    "spectrum": "spectrum",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fipgraph.query' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fipgraph.query.{module}"), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # The import system binds every loaded submodule as an attribute of its package. Where a
        # submodule shares its name with the function it exports (evaluate, select, spectrum, ...),
        # `fipgraph.query.select` must stay the function, as it was with eager imports.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
