#!/usr/bin/env bash
# Issues 15 + 11 §2: the reduced experiment-4 rerun (one seed, ensembles of 5) with the travel op beside the literal
# Algorithm 3. Build first (repo root, PYTHONPATH=$PWD; make /tmp/p5/adv_fmnist_2k as in RESULTS.md experiment 4):
#   nice -n 10 python -m fipgraph build examples/paper_adversarial_ensembles_travel.toml --store /tmp/h15/advt --threads 1 --no-progress
# then this script chooses and records the ensembles and attacks each with `fipgraph robustness`:
#   nice -n 10 bash benchmarks/exp4_travel.sh /tmp/h15/advt travel_l3
set -euo pipefail
ST=${1:-/tmp/h15/advt}
TRAVEL=${2:-travel_l3}   # the travel run whose nodes make the travel ensembles
F="python -m fipgraph"
E="$F ensemble --store $ST"
run_of() { echo "run_id in (select run_id from runs where name = 'advt/$1')"; }

$E -k 1 --strategy top --metric task1_accuracy --name single --where "step = 938 and $(run_of ind0)"
$E -k 5 --strategy top --metric task1_accuracy --name independent \
  --where "step = 938 and run_id in (select run_id from runs where name in ('advt/ind0','advt/ind1','advt/ind2','advt/ind3','advt/ind4'))"
$E -k 5 --strategy robust --where "$(run_of undirected)" --name fip               # the paper's H <= delta rule
$E -k 5 --strategy spread --max-drop 0.01 --where "$(run_of undirected)" --name fip_spread
# travel: members spread along the walk, within one point of the most accurate candidate, for growing path prefixes
for S in 500 1000 2000; do
  $E -k 5 --strategy spread --max-drop 0.01 --where "step <= $S and $(run_of "$TRAVEL")" --name "travel_s$S"
done
for ENS in single independent fip fip_spread travel_s500 travel_s1000 travel_s2000; do
  $F robustness --store "$ST" --ensemble "$ENS" --surrogate advt/surrogate --eps 0.1 --max-iter 10 --clip 0 1 \
    -n 1000 --joint-n 200 --data fashion-mnist --split "[[0,1,2,3,4,5,6,7,8,9]]" \
    --data-kwargs '{"folder": "/tmp/p5/adv_fmnist_2k"}' > /dev/null
  echo "robustness $ENS done"
done
$F sql --store "$ST" "select name, members from ensembles"
