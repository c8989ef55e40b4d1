"""How long `fipgraph ui` takes to show a large store in headless Chromium.

    python benchmarks/bench_ui.py                 # 100k nodes (about 1 minute on 2 cores)
    python benchmarks/bench_ui.py --nodes 20000 --screenshot big.png
    python benchmarks/bench_ui.py --store store --click 180 --hover 205 --screenshot docs/images/ui_graph.png

Builds a catalog-only store (nodes, edges, runs and evals rows written straight into DuckDB, as
tests/test_store_scale.py does; the page reads no weights) with recorded PCA coordinates, starts
`fipgraph ui` in a subprocess, and loads the page in Debian's chromium through Playwright. The time
is from navigation start until the page has fetched, parsed and drawn every node
(window.fipgraph.timings.total_ms); the first load after the server starts is reported apart.
Writes benchmarks/results/ui.json (not with --store, which only takes the screenshot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

import fipgraph

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_store(path: Path, n: int, n_runs: int = 20, seed: int = 0) -> None:
    """n nodes in n_runs chains (each run forks from the middle of an earlier one), random-walk PCA
    coordinates and two accuracies per node."""
    fipgraph.open_store(path).close()
    rng = np.random.default_rng(seed)
    per_run = n // n_runs
    ids = np.arange(n)
    run = np.minimum(ids // per_run, n_runs - 1)
    parent = ids - 1.0
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    for k, s in enumerate(starts):
        parent[s] = np.nan if k == 0 else starts[k - 1] + per_run // 2
    steps = rng.normal(0, 1, (n, 2)).cumsum(0) * 0.05
    steps[starts] = 0
    xy = np.zeros((n, 2))
    for k, s in enumerate(starts):  # each run walks on from its fork point
        e = starts[k + 1] if k + 1 < len(starts) else n
        base = xy[int(parent[s])] if k else 0
        xy[s:e] = base + (steps[s:e] - steps[s])
    ops = np.array(["finetune", "continual", "sparsify", "undirected"])[run % 4]
    now = dt.datetime(2026, 12, 2)
    nodes = pd.DataFrame({"node_id": ids, "parent_id": pd.array(parent, dtype="Int64"), "run_id": run, "op": ops,
                          "step": ids - starts[run], "created_at": now, "arch_id": "a", "n_params": 9610,
                          "l2_norm": 7 + xy[:, 0] * 0.1, "sparsity": 0.0, "path_length": 0.0, "tags": None})
    edges = pd.DataFrame({"src": parent[1:], "dst": ids[1:], "distance": 0.1, "output_distance": None}).dropna(subset=["src"])
    acc1 = np.clip(0.98 - 0.02 * np.abs(xy[:, 1]), 0, 1)
    acc2 = np.clip(0.5 + 0.1 * xy[:, 0], 0, 1)
    evals = pd.concat([pd.DataFrame({"node_id": ids, "dataset": ds, "metric": m, "value": v, "created_at": now})
                       for ds, m, v in [("pca", "pc1", xy[:, 0]), ("pca", "pc2", xy[:, 1]),
                                        ("task1", "accuracy", acc1), ("task2", "accuracy", acc2)]])
    runs = pd.DataFrame({"run_id": range(n_runs), "name": [f"bench/run{k}" for k in range(n_runs)],
                         "op": ops[starts], "config": "{}", "status": "finished", "started_at": now, "finished_at": now})
    con = duckdb.connect(str(path / "metrics.duckdb"))
    for name, frame in [("nodes", nodes), ("edges", edges), ("evals", evals), ("runs", runs)]:
        con.register("_f", frame)
        con.execute(f"INSERT INTO {name} SELECT * FROM _f")
        con.unregister("_f")
    from fipgraph.storage.catalog import wide_view_sql  # what the writer runs when new metrics appear

    con.execute(wide_view_sql([("pca", "pc1"), ("pca", "pc2"), ("task1", "accuracy"), ("task2", "accuracy")]))
    con.close()


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "fipgraph", "ui", "--store", str(store), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"fipgraph ui did not start: {line}{proc.stderr.read()}")
    return proc, line[line.index("http://"):].split()[0]


def load_page(browser, url: str, screenshot: str | None = None) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    wall = time.perf_counter()
    page.goto(url)
    page.wait_for_function("window.fipgraph && window.fipgraph.ready", timeout=120_000)
    wall = time.perf_counter() - wall
    out = dict(page.evaluate("window.fipgraph.timings"), wall_s=wall,
               drawn=page.evaluate("window.fipgraph.graph.drawnCount"))
    if screenshot:
        page.screenshot(path=screenshot)
    page.close()
    return out


def screenshot_store(store: Path, out: str | None, node: int | None, hover: int | None) -> None:
    from playwright.sync_api import sync_playwright

    proc, url = start_server(store)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(url)
            page.wait_for_function("window.fipgraph && window.fipgraph.ready", timeout=120_000)
            print(f"{store}: ready in {page.evaluate('window.fipgraph.timings.total_ms') / 1000:.2f} s, "
                  f"{page.evaluate('window.fipgraph.graph.drawnCount')} nodes drawn")
            # a store without recorded PCA: the page polls until the server's own fit is done, or the server
            # says why it will not fit one (PcaPlacer.status: only a running fit says "computing")
            page.wait_for_function("window.fipgraph.state.graph.layout === window.fipgraph.state.graph.layout_requested"
                                   " || !/computing weight-space PCA/.test(window.fipgraph.state.graph.layout_note)",
                                   timeout=120_000)
            if node is not None:
                pos = page.evaluate(f"window.fipgraph.graph.screenPos({node})")
                page.mouse.click(pos["x"], pos["y"])
                # a click picks the nearest drawn node, the newest on a tie: in a dense store a later node can sit
                # on the same pixel (e.g. a walk's first step), and then that node's panel opens
                panel = page.wait_for_selector("#node-panel", state="visible", timeout=120_000)
                shown = panel.get_attribute("data-node")
                if shown is None:
                    raise SystemExit(f"node {node}: the panel shows an error: {panel.inner_text()[:500]}")
                if shown != str(node):
                    print(f"node {node} shares its pixel with node {shown}: the panel shows node {shown}")
            if hover is not None:
                pos = page.evaluate(f"window.fipgraph.graph.screenPos({hover})")
                page.mouse.move(pos["x"], pos["y"])
            time.sleep(0.5)
            if out:
                page.screenshot(path=out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--store", default=None, help="an existing store: load it once and take the screenshot")
    ap.add_argument("--click", type=int, default=None, help="with --store: open this node's panel first")
    ap.add_argument("--hover", type=int, default=None, help="with --store: then point at this node")
    ap.add_argument("--out", type=Path, default=RESULTS / "ui.json", help="where the numbers go")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    if args.store:
        screenshot_store(Path(args.store), args.screenshot, args.click, args.hover)
        return

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "big"
        t = time.perf_counter()
        make_store(store, args.nodes)
        print(f"store of {args.nodes:,} nodes written in {time.perf_counter() - t:.1f} s")
        proc, url = start_server(store)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                first = load_page(browser, url)
                warm = [load_page(browser, url, args.screenshot if i == args.repeats - 1 else None)
                        for i in range(args.repeats)]
                browser.close()
            # the same payload for another colour: not cached, so this is the server's full cost
            t = time.perf_counter()
            with urllib.request.urlopen(url + "api/graph?layout=pca&color=task2_accuracy") as r:
                uncached = {"seconds": time.perf_counter() - t, "bytes": len(r.read())}
        finally:
            proc.terminate()
            proc.wait(10)
    med = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
    result = {"nodes": args.nodes, "first_load": first, "warm_median": med, "uncached_api": uncached,
              "load_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"{args.nodes:,} nodes: first load {first['total_ms'] / 1000:.2f} s, then median "
          f"{med['total_ms'] / 1000:.2f} s over {args.repeats} (fetch {med['fetch_ms']:.0f} ms, "
          f"parse {med['parse_ms']:.0f} ms, draw {med['draw_ms']:.0f} ms, {med['bytes'] / 1e6:.1f} MB JSON); "
          f"{int(med['drawn']):,} drawn; an uncached /api/graph (another colour) took {uncached['seconds']:.2f} s")


if __name__ == "__main__":
    main()
