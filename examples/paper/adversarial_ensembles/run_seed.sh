#!/usr/bin/env bash
# Paper experiment 4 (travel rerun), one seed per call, from the repo root:
#   bash examples/paper/adversarial_ensembles/run_seed.sh S STORE     # S = 0, 1, 2: ensembles of K=5, named s3_*
# builds config.toml with seed S's per-run seeds (ind<i> 100*S + i, surrogate 100*S + 50, walks 100*S), chooses and
# records the ensembles and attacks each with `fipgraph robustness`. Ensembles of 10 in the same store (five more
# independent networks first):
#   K=10 PREFIX=s10_ CONFIG=examples/paper/adversarial_ensembles/config_k10.toml ONLY="independent fip travel_s2000" \
#     bash examples/paper/adversarial_ensembles/run_seed.sh S STORE
# STAGE=ensembles skips the build; ONLY limits the ensembles. Needs the data folder: python prepare_data.py (here).
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0")
S=${1:?seed 0, 1 or 2}
ST=${2:?store directory}
K=${K:-5}
PREFIX=${PREFIX:-s3_}
CONFIG=${CONFIG:-$HERE/config.toml}
ONLY=${ONLY:-single independent fip fip_spread travel_s500 travel_s1000 travel_s2000}
F="python -m fipgraph"
DATA=(--data fashion-mnist --split "[[0,1,2,3,4,5,6,7,8,9]]" --data-kwargs "{\"folder\": \"$HERE/data/fmnist_2k\"}")
if [ "${STAGE:-build}" = build ]; then
  # per-run seeds for the runs this config has: ind<i> -> 100*S + i, surrogate -> 100*S + 50, walks -> 100*S
  SEEDS=$(python -c "import sys, tomllib; S = int(sys.argv[1]); runs = tomllib.load(open(sys.argv[2], 'rb'))['runs']
off = lambda n: int(n[3:]) if n.startswith('ind') else 50 if n == 'surrogate' else 0
print(' '.join(f'runs.{r[\"name\"]}.seed={100 * S + off(r[\"name\"])}' for r in runs))" "$S" "$CONFIG")
  # shellcheck disable=SC2086
  $F build "$CONFIG" $SEEDS --store "$ST" --threads 1 --no-progress
fi
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
E="$F ensemble --store $ST"
run_of() { echo "run_id in (select run_id from runs where name = 'advt/$1')"; }
INDS=$(python -c "print(','.join(f\"'advt/ind{i}'\" for i in range($K)))")
if wanted single; then $E -k 1 --strategy top --metric task1_accuracy --name "${PREFIX}single" --where "step = 938 and $(run_of ind0)"; fi
if wanted independent; then $E -k "$K" --strategy top --metric task1_accuracy --name "${PREFIX}independent" \
  --where "step = 938 and run_id in (select run_id from runs where name in ($INDS))"; fi
if wanted fip; then $E -k "$K" --strategy robust --where "$(run_of undirected3)" --name "${PREFIX}fip"; fi   # the paper's H <= delta rule
if wanted fip_spread; then $E -k "$K" --strategy spread --max-drop 0.01 --where "$(run_of undirected3)" --name "${PREFIX}fip_spread"; fi
# travel: members spread along the walk, within one point of the most accurate candidate, for growing path prefixes
for P in 500 1000 2000; do
  if wanted "travel_s$P"; then
    $E -k "$K" --strategy spread --max-drop 0.01 --where "step <= $P and $(run_of travel3)" --name "${PREFIX}travel_s$P" \
      || echo "ensemble ${PREFIX}travel_s$P not chosen (see the error above)"
  fi
done
for ENS in $ONLY; do
  $F robustness --store "$ST" --ensemble "$PREFIX$ENS" --surrogate advt/surrogate --eps 0.1 --max-iter 10 --clip 0 1 \
    -n 1000 --joint-n 200 "${DATA[@]}" > /dev/null && echo "robustness $PREFIX$ENS done $(date +%T)" \
    || echo "robustness $PREFIX$ENS FAILED"
done
$F sql --store "$ST" "select name, members from ensembles where name like '$PREFIX%'"
