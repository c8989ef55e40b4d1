#!/usr/bin/env bash
# Soups vs ensembles on FIP walks (issue 25, experiment 4's design at digits scale): build -> soups, ensemble, PGD -> figure.
# From a fresh clone (repo root), nothing to download (scikit-learn's digits):
#   bash examples/paper/soups/reproduce.sh [STORES]    # STORES: where the store goes (default ./paper-stores)
# About 65 s to build and a minute to analyse on 2 CPU cores.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
python -m fipgraph build "$HERE/config.toml" --store "$STORES/soups" --threads 1 --no-progress
python "$HERE/analyse.py" --store "$STORES/soups" --out "$HERE/soups.png"
