"""The ops a run can take: one module per op, each registering itself with ``register_objective``.

Importing this package imports every op module, so ``OBJECTIVES`` is complete wherever it is read
(config checks, the run recipe, the CLI). The base class, its settings and the registry live in
``ops.base``; an op's capabilities (``uses_memory``, ``can_batch``, ``can_fuse``, ...) are class
attributes of the op, so no list of op names lives anywhere else.
"""

from fipgraph.path.ops import (continual, ewc, finetune, lora, lottery, oneshot_prune, replay,  # noqa: F401
                               sparsify, travel, undirected)
from fipgraph.path.ops.base import (OBJECTIVES, Context, Objective, OpConfig, all_option_names, option_names,
                                    register_objective)

__all__ = ["OBJECTIVES", "Context", "Objective", "OpConfig", "all_option_names", "option_names", "register_objective"]
