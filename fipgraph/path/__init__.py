"""Producers: walks along functionally invariant paths (and the paper's baselines) into the store.

- ``ops/``: what a run optimises — one module per op (continual, sparsify, undirected, travel, finetune,
  ewc, replay, oneshot_prune, lottery, lora), the op base class and registry, output distances.
- ``engine/``: how a run steps — the run recipe (set-up → resume → loop → finish), the FIP step,
  memory buffers, optimizers, non-blocking snapshots, Ctrl-C, and the batched engine for replicas.
- ``config/``: what a build asks for — the TOML schema, field checks, overrides and sweeps.
- ``build.py``: a whole build, config → runs → store.
"""

from fipgraph.path.build import BuildResult, build, format_table
from fipgraph.path.config import BuildConfig, DataConfig, RunConfig, load_config
from fipgraph.path.engine.memory import FrozenReference
from fipgraph.path.engine.recipe import RunRecipe
from fipgraph.path.engine.replicas import ReplicaSettings
from fipgraph.path.engine.step import Amp, fip_loss, fip_step
from fipgraph.path.ops import OBJECTIVES, Objective, OpConfig, register_objective
from fipgraph.path.ops.odist import ODISTS, get_odist, register_odist

__all__ = ["Amp", "BuildConfig", "BuildResult", "DataConfig", "FrozenReference", "OBJECTIVES", "ODISTS", "Objective",
           "OpConfig", "ReplicaSettings", "RunConfig", "RunRecipe", "build", "fip_loss", "fip_step", "format_table",
           "get_odist", "load_config", "register_objective", "register_odist"]
