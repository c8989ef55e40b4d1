"""How a run steps: the run recipe, the FIP step, memory, optimizers, snapshots, Ctrl-C, replicas.

Kept free of imports so ops can use the engine's primitives (memory, evaluate) without a cycle."""
