#!/usr/bin/env bash
# Issue 11 seeds: CPU time per build/robustness process, sampled from /proc every 5 s (beside the builds, at nice 19):
#   nice -n 19 bash benchmarks/cpu_sampler.sh >> /tmp/s211/cpu.log &     then: python benchmarks/cpu_per_run.py /tmp/s211/cpu.log STORE
# every 5 s: epoch, pid, utime+stime ticks (CLK_TCK=100) of each fipgraph build/robustness process of this session
while true; do
  now=$(date +%s.%N)
  for p in $(pgrep -f "fipgraph (build|robustness|ensemble).*${1:-/tmp/s211/}"); do
    if [ -r /proc/$p/stat ]; then
      t=$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null)
      a=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -o -- '--store [^ ]*\|--ensemble [^ ]*' | tr '\n' ' ')
      echo "$now $p $t $a"
    fi
  done
  sleep 5
done
