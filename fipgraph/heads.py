"""The label layouts a task sequence can have (a build's ``data.head``), named in one place.

single: one head sized for every task from the start, a label is its class id; per_task: one block
of output units per task, a task is scored on its own block (``fipgraph.query.scoring.head_slice``).
Light on purpose: the command line offers these as choices before importing torch.
"""

HEADS = ("single", "per_task")
