"""``fipgraph build``: walk the runs of a config into a store (default: the embedded digits demo)."""

from __future__ import annotations

import argparse
import json
import sys

from fipgraph.cli import add_store_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build", help="build FIP paths into a store (no arguments: the digits demo)",
        description="Run every [[runs]] entry of CONFIG.toml (default: the embedded digits demo, also in "
                    "fipgraph/path/default.toml). Rerunning the same command resumes each run from its last node.")
    add_store_argument(p)
    p.add_argument("--run", default=None, metavar="NAME",
                   help="build name: runs are stored as NAME/<run> (default: the config's name)")
    p.add_argument("--from", dest="start", type=int, default=None, metavar="NODE",
                   help="start every run that has no `from` at this stored node")
    p.add_argument("--max-hours", type=float, default=None, metavar="H",
                   help="stop (saving the current node) after H hours; rerun to continue")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after N optimizer steps in total; rerun to continue")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch intra-op threads (default 1: small networks run fastest single-threaded, "
                        "beside the store's writer thread; raise it for large models)")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="auto (CUDA, then MPS, then CPU; the log says which) | cpu | cuda | cuda:N | mps, "
                        "for every run (default: the config's, else auto)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="autocast precision over fp32 weights for every run (default: the config's, else fp32; "
                        "fp16 needs CUDA or MPS)")
    p.add_argument("--durable", action="store_true",
                   help="fsync each node's files and the catalog before its commit, so a power loss (not only a "
                        "killed process) loses no committed node; costs about 1.1x append time")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one run per combination of values, named after them (repeatable; also a [sweep] table): "
                        "--sweep seed=0,1,2 --sweep runs.sparsify.lam=0.1,1")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: runs one after another in this process; ray: independent runs in parallel as Ray "
                        "tasks (each run's num_cpus/num_gpus), one store as the result")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
                   help="--executor ray: join this Ray cluster (default: start Ray on this machine)")
    p.add_argument("--shared-store", action=argparse.BooleanOptionalAction, default=None,
                   help="--executor ray: workers encode and write their own nodes' weights into the store (every "
                        "worker mounts the --store folder at the same path; the default for a URL store), or "
                        "--no-shared-store: they send them to the writer (the default for a folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # one positional list: the config file and the overrides are told apart by "=" (argparse needs
    # them side by side: `build CONFIG k=v --store S` or `build --store S CONFIG k=v`)
    p.add_argument("args", nargs="*", metavar="[CONFIG.toml] [key=value]",
                   help="a TOML config (default: the embedded demo) and overrides: lr=0.01 (every run), "
                        "runs.continual.steps=50, data.seed=1")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    import torch

    from fipgraph.path import build, format_table, load_config

    paths = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(paths) > 1:
        from fipgraph.errors import ConfigError
        raise ConfigError(f"give one config file, got {paths}; overrides are key=value")
    config_path = paths[0] if paths else None
    if args.run:
        overrides.append(f"name={args.run!r}".replace("'", '"'))
    for key in ("device", "precision"):  # a bare run key: the flag wins over the config for every run
        if getattr(args, key) is not None:
            overrides.append(f"{key}={json.dumps(getattr(args, key))}")
    config = load_config(config_path, overrides, args.sweep)
    if args.threads < 1:
        from fipgraph.errors import ConfigError
        raise ConfigError(f"--threads {args.threads}: give at least 1")
    torch.set_num_threads(args.threads)
    if args.executor == "ray":
        result = _build_on_ray(config, args)
    else:
        ray_only = {f"--address {args.address}": args.address,
                    "--shared-store" if args.shared_store else "--no-shared-store": args.shared_store}
        for flag, value in ray_only.items():
            if value is not None:
                from fipgraph.errors import ConfigError
                raise ConfigError(f"{flag} needs --executor ray")
        result = build(config, args.store, start=args.start, max_hours=args.max_hours, max_steps=args.max_steps,
                       progress=not args.no_progress, durable=args.durable)
    print(format_table(result))
    for name, error in result.failed.items():
        print(f"run {name!r} failed: {error}", file=sys.stderr)
    if result.failed:
        return 1
    print(f"store: {args.store}   log: {result.log_path}")
    if result.status != "finished" and not result.runs:
        print("interrupted before the first step; rerun the same command to start", file=sys.stderr)
        return 130
    if result.status != "finished":
        last = result.runs[-1]
        reason = "interrupted" if last.stop_reason == "interrupt" else "stopped at the step/time limit"
        print(f"run {last.name!r} {reason} at node {last.last_node}; rerun the same command to resume",
              file=sys.stderr)
        return 130 if last.stop_reason == "interrupt" else 0
    return 0


def _build_on_ray(config, args: argparse.Namespace):
    from fipgraph.errors import ConfigError
    from fipgraph.scale.ray_executor import build_ray

    if args.max_steps is not None:
        raise ConfigError("--max-steps counts steps across runs taken in order; with --executor ray runs go in "
                          "parallel, so stop them with --max-hours instead")
    return build_ray(config, args.store, start=args.start, max_hours=args.max_hours, durable=args.durable,
                     address=args.address, threads=args.threads, shared_storage=args.shared_store)
