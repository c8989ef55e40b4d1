"""CLI: merge and soup (networks made from several stored ones) and export-zoo (a selection as a weight-space
dataset) -- thin wrappers of fipgraph.query.

The merge is computed from a read-only store; the writer lock is taken only to append the result, so a
build holding the lock makes the command fail at the end with a clear message rather than wait.
"""

from __future__ import annotations

from fipgraph.cli import add_store_argument
from fipgraph.cli.query_cmds import _add_data, _add_device, _tasks
from fipgraph.errors import ConfigError

MERGE_METHODS = ("linear", "task_arithmetic", "ties", "slerp")  # fipgraph.query.merge_methods.METHODS


def built_nodes(store, nodes: list[int]) -> list[int]:
    """Each node, or for one without a run (a merge of merges) its nearest primary ancestor with one: the
    nodes whose runs recorded the data a merge is scored on by default."""
    from fipgraph.query._common import resolve_nodes

    nodes, g = resolve_nodes(store, nodes), store.graph()  # unknown ids fail here, naming them
    out = []
    for n in nodes:
        while g.nodes[n].get("run_id") is None and g.nodes[n]["parents"]:
            n = g.nodes[n]["parents"][0]
        out.append(n)
    return out


def merge_tasks(args, store, nodes: list[int]) -> list:
    """--data and friends, each defaulting to the [data] the merged nodes' builds recorded."""
    return _tasks(args, store, built_nodes(store, nodes))


def _save(args, merged) -> int:
    from fipgraph.storage import open_store

    with open_store(args.store, mode="a") as writer:
        return merged.save(writer)


def _print_scores(metrics: dict) -> None:
    for dataset, values in metrics.items():
        print(f"  {dataset}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))


def cmd_merge(args) -> int:
    from fipgraph.query import merge
    from fipgraph.query.catalog import require_store
    from fipgraph.storage import open_store

    require_store(args.store)
    options = {k: v for k, v in (("density", args.density), ("t", args.t), ("lambda_", args.lambda_),
                                 ("normalize", args.normalize)) if v is not None}
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise ConfigError(f"--weights {args.weights!r}: give numbers separated by commas, e.g. 0.7,0.3") from None
    with open_store(args.store, mode="r") as store:
        tasks = [] if args.no_eval else merge_tasks(args, store, args.nodes)
        merged = merge(store, args.nodes, args.method, base=args.base, weights=weights, data=tasks or None,
                       record=False, device=args.device, **options)
    node = _save(args, merged)
    over = f" over base {args.base}" if args.base is not None else ""
    print(f"node {node}: {args.method} merge of {merged.nodes}{over}")
    if merged.metrics:
        _print_scores(merged.metrics)
    return 0


def cmd_soup(args) -> int:
    from fipgraph.cli.query_cmds import _parse_nodes
    from fipgraph.query import soup
    from fipgraph.query._common import all_node_ids
    from fipgraph.query.catalog import require_store
    from fipgraph.storage import open_store

    require_store(args.store)
    with open_store(args.store, mode="r") as store:
        nodes = _parse_nodes(store, args.nodes, args.where)
        tasks = merge_tasks(args, store, nodes if nodes is not None else all_node_ids(store))
        merged = soup(store, nodes, method=args.method, data=tasks or None, record=False, device=args.device)
    node = _save(args, merged)
    info = merged.tags["soup"]
    chosen = f"{len(merged.nodes)} of {len(info['candidates'])} networks"
    print(f"node {node}: {args.method} soup of {chosen}: {merged.nodes}")
    if args.method == "greedy":
        print(f"  chosen on {info['held_out']}: held-out accuracy {info['held_out_accuracy']:.4f}")
    _print_scores(merged.metrics)
    return 0


def cmd_export_zoo(args) -> int:
    from fipgraph.cli.query_cmds import _parse_nodes
    from fipgraph.query import export_zoo
    from fipgraph.query.catalog import require_store
    from fipgraph.storage import open_store

    require_store(args.store)
    with open_store(args.store, mode="r") as store:
        nodes = _parse_nodes(store, args.nodes, None)
        params = args.params.split(",") if args.params else None
        out = export_zoo(store, args.out, args.format, where=args.where, nodes=nodes, params=params,
                         weights=args.weights)
    what = "zoo.parquet" if args.format == "parquet" else "a folder per run, checkpoint_<node>/checkpoints"
    print(f"exported to {out} ({args.format}: {what}; index_dict.json maps vector slices to tensors)")
    return 0


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"--normalize {text!r}: use true or false")


def register(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge stored networks (linear, task_arithmetic, ties, slerp) into a "
                              "new node whose parents they are; evaluated on the build's data or --data")
    add_store_argument(p)
    p.add_argument("nodes", type=int, nargs="+", help="node ids; the first is the primary parent (slerp: t = 0)")
    # the names are not read from merge_methods here: that imports torch, and commands such as `fipgraph check`
    # must not pay for it; merge() refuses an unknown name with the list (tests/test_merge.py keeps them equal)
    p.add_argument("--method", default="linear", help=f"one of {', '.join(MERGE_METHODS)} (default linear)")
    p.add_argument("--base", type=int, help="task_arithmetic, ties: the ancestor the task vectors start from")
    p.add_argument("--weights", help="one weight per node, comma-separated (default 1 each)")
    p.add_argument("--density", type=float, help="ties: fraction of each task vector kept (default 1)")
    p.add_argument("-t", type=float, help="slerp: position between the two nodes (default 0.5)")
    p.add_argument("--lambda", dest="lambda_", type=float, help="task_arithmetic, ties: scale of the merged "
                   "task vector (default 1)")
    p.add_argument("--normalize", type=_bool, help="divide by the sum of weights: true or false (default: the "
                   "method's, as mergekit)")
    p.add_argument("--no-eval", action="store_true", help="store the merge without scoring it")
    _add_device(p)
    _add_data(p)
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser("soup", help="a model soup of the selected nodes (uniform mean, or Wortsman's greedy "
                              "soup chosen on held-out training examples), stored as a merge node")
    add_store_argument(p)
    p.add_argument("--method", default="uniform", choices=["uniform", "greedy"])
    p.add_argument("--nodes", help="ids and ranges, e.g. 0,5,10-20 (default: all)")
    p.add_argument("--where", help="SQL condition over the wide view choosing the nodes")
    _add_device(p)
    _add_data(p)
    p.set_defaults(func=cmd_soup)

    p = subparsers.add_parser("export-zoo", help="a selection of nodes as a weight-space dataset: the Model Zoos "
                              "layout or Parquet (datasets.load_dataset('parquet', ...) reads it)")
    add_store_argument(p)
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--format", default="modelzoo", choices=["modelzoo", "parquet"])
    p.add_argument("--where", help="SQL condition over the wide view choosing the nodes")
    p.add_argument("--nodes", help="ids and ranges, e.g. 0,5,10-20 (default: all)")
    p.add_argument("--params", help="comma-separated parameter names or prefixes (default: all float tensors)")
    p.add_argument("--weights", default="list", choices=["list", "safetensors"],
                   help="parquet: weights as a float32 list column, or one safetensors file per node beside it")
    p.set_defaults(func=cmd_export_zoo)

