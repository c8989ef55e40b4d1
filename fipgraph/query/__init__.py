"""Readers: questions asked of the stored networks (PCA, evaluation, selection, ensembles, geometry).

Names are imported on first use: `select` and `pareto` need only the catalog, while evaluation,
PCA and ensembles pull in torch, so a command that only selects does not pay for them. No module
is named like a function it exports (`selection` holds `select`), so loading a module never hides
the function behind the package attribute of the same name.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Ensemble": "ensembles", "ensemble": "ensembles", "load_ensemble": "ensembles",
    "evaluate": "evaluation", "perplexity": "evaluation",
    "branches": "graph", "lineage": "graph", "path_between": "graph",
    "interpolate": "interpolation",
    "Merged": "merging", "merge": "merging",
    "NotFittedError": "pca", "WeightPCA": "pca",
    "pareto": "selection", "select": "selection", "select_sql": "selection",
    "recorded_data": "recorded", "recorded_tasks": "recorded",
    "soup": "soups",
    "spectrum": "spectra",
    "WeightDataset": "zoo", "to_dataset": "zoo", "export_zoo": "zoo_export",
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
