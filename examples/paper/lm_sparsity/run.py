"""Issue 22 §3: one-shot magnitude and Wanda vs FIP sparsify on SmolLM2-135M, from one dense start node.

    python examples/paper/lm_sparsity/run.py build --store STORE [--runs fip_50 ...] [--threads 1]
    python examples/paper/lm_sparsity/run.py report --store STORE [STORE ...] --out DIR

``build`` runs the [[runs]] of config.toml (all, or those named by --runs; "dense" is always kept,
since every other run starts from it) into STORE (the config it used is kept as STORE.toml); rerunning resumes. Several stores may each hold a
share of the runs (two processes on two cores), each with its own, identical dense node (same seed,
same step: the report checks that their perplexities agree). ``report`` writes DIR/lm_sparsity.md (the
table: wiki and news perplexity ± standard error over blocks of every run's last node, and × dense)
and DIR/lm_sparsity_curves.png (perplexity vs step of every run).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def subset_config(runs: list[str] | None) -> str:
    """config.toml with only the named runs (and "dense"), as TOML text."""
    cfg = tomllib.loads(CONFIG.read_text())
    names = [r["name"] for r in cfg["runs"]]
    unknown = sorted(set(runs or []) - set(names))
    if unknown:
        sys.exit(f"--runs {unknown}: not in {CONFIG.name}; choose from {names}")
    keep = [r for r in cfg["runs"] if runs is None or r["name"] in runs or r["name"] == "dense"]
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list))]
    for table in ("store", "data", "model", "defaults"):
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in cfg[table].items()]
    for run in keep:
        lines += ["", "[[runs]]"] + [f"{k} = {_toml_value(v)}" for k, v in run.items()]
    return "\n".join(lines) + "\n"


def cmd_build(args) -> int:
    from fipgraph.cli import main

    store = Path(args.store)
    config = store.with_name(store.name + ".toml")  # what this store was built from, kept beside it
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(subset_config(args.runs))
    argv = ["build", str(config), "--store", str(store), "--threads", str(args.threads), "--no-progress"]
    if args.max_hours:
        argv += ["--max-hours", str(args.max_hours)]
    return main(argv)


def cmd_report(args) -> int:
    from report import write_report  # beside this script

    write_report([Path(s) for s in args.store], Path(args.out))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="run the experiment's runs into a store (resumable)")
    b.add_argument("--store", required=True, help="store directory (created if missing)")
    b.add_argument("--runs", nargs="+", help="only these runs of config.toml (dense is always included)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    b.add_argument("--max-hours", type=float, help="stop after this long; rerun to continue")
    b.set_defaults(fn=cmd_build)
    r = sub.add_parser("report", help="table and curves from one or more stores")
    r.add_argument("--store", nargs="+", required=True, help="stores built by `build`")
    r.add_argument("--out", required=True, help="folder for lm_sparsity.md and lm_sparsity_curves.png")
    r.set_defaults(fn=cmd_report)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    ns = parse()
    sys.exit(ns.fn(ns))
