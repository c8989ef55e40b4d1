#!/usr/bin/env bash
# Paper experiment 4, adversarially robust ensembles on Fashion-MNIST: per seed, build -> choose ensembles -> PGD
# attacks (run_seed.sh: travel vs Algorithm 3 vs independent, k = 5; run_ensembles10.sh: k = 10 with FGE) -> figures.
# From a fresh clone (repo root), data first:
#   sudo apt-get install -y dataset-fashion-mnist
#   bash examples/paper/adversarial_ensembles/reproduce.sh [STORES]   # STORES: default ./paper-stores
# About 15 CPU-minutes per seed for each of the two stores; rerunning resumes the builds.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
python "$HERE/prepare_data.py"
for S in 0 1 2; do
  bash "$HERE/run_seed.sh" $S "$STORES/adv_s$S"
  bash "$HERE/run_ensembles10.sh" $S "$STORES/adv10_s$S"
done
python "$HERE/plot.py" "$STORES"/adv_s{0,1,2} --out "$HERE/exp4_travel3.png"        # tables + figure
python "$HERE/plot_ensembles10.py" "$STORES"/adv10_s{0,1,2} --out-dir "$HERE"
