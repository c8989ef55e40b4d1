#!/usr/bin/env bash
# Paper experiment 4, ensembles of 10 (ensembles10.toml: FIP Algorithm 3, independent, FGE), one seed per call:
#   bash examples/paper/adversarial_ensembles/run_ensembles10.sh S STORE    # S = 0, 1, 2
# builds with seed S's per-run seeds (ind<i> 100*S + i, surrogate 100*S + 50, walks 100*S), chooses and records the
# ensembles fip, independent, fge, fge_hi, single, fip_diverse and attacks each with `fipgraph robustness`.
# Needs the data folder: python examples/paper/adversarial_ensembles/prepare_data.py
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); S=${1:?seed 0, 1 or 2}; ST=${2:?store directory}
F="python -m fipgraph"
SEEDS=$(python -c "import sys; S = int(sys.argv[1]); print(' '.join([f'runs.ind{i}.seed={100*S+i}' for i in range(10)]
  + [f'runs.surrogate.seed={100*S+50}', f'runs.undirected.seed={100*S}', f'runs.fge.seed={100*S}']))" "$S")
# shellcheck disable=SC2086
$F build "$HERE/ensembles10.toml" $SEEDS --store "$ST" --threads 1 --no-progress
E="$F ensemble --store $ST -k 10"
run_is() { echo "run_id in (select run_id from runs where name = 'adv/$1')"; }
$E --strategy robust --where "op = 'undirected'" --name fip
$E --strategy top --metric task1_accuracy --name independent \
  --where "step = 938 and run_id in (select run_id from runs where name like 'adv/ind%')"
$E --strategy top --metric task1_accuracy --where "$(run_is fge)" --name fge
$E --strategy top --metric task1_accuracy --where "$(run_is fge_hi)" --name fge_hi
$E --strategy diverse --where "op = 'undirected'" --name fip_diverse
$F ensemble --store "$ST" -k 1 --strategy top --metric task1_accuracy --name single --where "step = 938 and $(run_is ind0)"
for ENS in fip independent fge fge_hi single fip_diverse; do
  $F robustness --store "$ST" --ensemble $ENS --surrogate adv/surrogate --eps 0.1 --max-iter 10 --clip 0 1 \
    -n 1000 --joint-n 200 --data fashion-mnist --split "[[0,1,2,3,4,5,6,7,8,9]]"
done
$F sql --store "$ST" "select name, metric, arg_max(value, created_at) as v from ensemble_evals group by all order by all"
