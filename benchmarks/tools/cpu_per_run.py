"""CPU seconds per run of a build, from benchmarks/tools/cpu_sampler.sh's samples and the store's build.log.

    python benchmarks/tools/cpu_per_run.py CPU_LOG STORE [STORE ...]

A run's interval is from its "device cpu" line (its start) to its "finished at step" line in STORE/build.log; its CPU
time is the build process's utime + stime (interpolated between the 5-s samples) at the end minus at the start, so
each value is good to about ±0.5 s of CPU at the load these ran under (the sample spacing times the CPU share).
Runs that started before the first sample are reported as not measured.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

LINE = re.compile(r"^(\S+ \S+),\d+ INFO (\S+?): (device cpu|finished at step)")


def samples(log: str, store: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, CPU seconds) of the build process writing `store` (of the processes whose command line names
    it, e.g. a wrapping `bash -c`, the one that used the most CPU)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for line in Path(log).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3] == "--store" and parts[4].rstrip("/") == store.rstrip("/") and parts[2].isdigit():
            rows.setdefault(parts[1], []).append((float(parts[0]), int(parts[2]) / 100))
    if not rows:
        raise SystemExit(f"no samples for --store {store} in {log}")
    t, c = zip(*max(rows.values(), key=lambda r: r[-1][1]))
    return np.array(t), np.array(c)


def intervals(store: str) -> dict[str, list[float]]:
    """{run: [start epoch, end epoch]} from the store's build.log."""
    out: dict[str, list[float]] = {}
    for line in (Path(store) / "build.log").read_text().splitlines():
        m = LINE.match(line)
        if m:
            when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
            out.setdefault(m[2], [when, float("nan")])[0 if m[3] == "device cpu" else 1] = when
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", help="the samples written by benchmarks/tools/cpu_sampler.sh")
    ap.add_argument("stores", nargs="+", help="store folders whose build.log gives the runs' intervals")
    args = ap.parse_args()
    log, stores = args.log, args.stores
    for store in stores:
        t, cpu = samples(log, store)
        for run, (start, end) in intervals(store).items():
            if not (t[0] <= start and end == end and end <= t[-1] + 5):
                print(f"{store} {run}: not measured (outside the samples or unfinished)")
                continue
            used = np.interp(end, t, cpu) - np.interp(start, t, cpu)
            print(f"{store} {run}: {used:.0f} CPU-s in {(end - start) / 60:.1f} wall-min ({used / (end - start):.2f} of a core)")


if __name__ == "__main__":
    main()
