"""Producers: functionally invariant paths (continual, sparsify, undirected, finetune) and the paper's
baselines (ewc, replay, oneshot_prune, lottery, lora) into the store."""

from fipgraph.path.build import BuildResult, build, format_table
from fipgraph.path.config import BuildConfig, DataConfig, RunConfig, load_config
from fipgraph.path.memory import FrozenReference
from fipgraph.path.objectives import OBJECTIVES, Objective, OpConfig, register_objective
from fipgraph.path.odist import ODISTS, get_odist, register_odist
from fipgraph.path.step import Amp, fip_loss, fip_step
from fipgraph.path.walk import RunRecipe

__all__ = ["Amp", "BuildConfig", "BuildResult", "DataConfig", "FrozenReference", "OBJECTIVES", "ODISTS", "Objective",
           "OpConfig", "RunConfig", "RunRecipe", "build", "fip_loss", "fip_step", "format_table", "get_odist", "load_config",
           "register_objective", "register_odist"]
