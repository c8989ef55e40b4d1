"""Readers: questions asked of the stored networks (PCA, evaluation, selection, ensembles, geometry)."""

from fipgraph.query.ensemble import Ensemble, ensemble, load_ensemble
from fipgraph.query.evaluate import evaluate, perplexity
from fipgraph.query.graph import branches, lineage, path_between
from fipgraph.query.pca import NotFittedError, WeightPCA
from fipgraph.query.select import pareto, select, select_sql
from fipgraph.query.spectrum import spectrum

__all__ = ["Ensemble", "NotFittedError", "WeightPCA", "branches", "ensemble", "evaluate",
           "lineage", "load_ensemble", "pareto", "path_between", "perplexity", "select",
           "select_sql", "spectrum"]
