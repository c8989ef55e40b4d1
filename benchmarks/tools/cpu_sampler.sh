#!/usr/bin/env bash
# CPU time per fipgraph build/robustness/ensemble process, sampled from /proc every 5 s, for
# benchmarks/tools/cpu_per_run.py (beside long builds, at nice 19):
#   nice -n 19 bash benchmarks/tools/cpu_sampler.sh STORE_PREFIX >> cpu.log &
#   python benchmarks/tools/cpu_per_run.py cpu.log STORE [STORE ...]
# Each line: epoch, pid, utime+stime ticks (CLK_TCK=100), and the process's --store / --ensemble arguments.
# STORE_PREFIX: only processes whose command line has it after the subcommand (e.g. the folder of your stores).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" || $# -ne 1 ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -eq 1 ]] && exit 0 || exit 2
fi
while true; do
  now=$(date +%s.%N)
  for p in $(pgrep -f "fipgraph (build|robustness|ensemble).*$1" || true); do
    if [ -r /proc/$p/stat ]; then
      t=$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null)
      a=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -o -- '--store [^ ]*\|--ensemble [^ ]*' | tr '\n' ' ')
      echo "$now $p $t $a"
    fi
  done
  sleep 5
done
