"""CLI: pca, perplexity, evaluate, select, ensemble, robustness, spectrum, plot (thin wrappers of fipgraph.query)."""

from __future__ import annotations

import argparse
import json
import sys

from fipgraph.cli import add_store_argument
from fipgraph.errors import ConfigError, WriterLockedError


def _open(args, write: bool = True):
    """Open for writing so results are cached; while a build holds the writer lock, read only."""
    import fipgraph

    if not write:
        return fipgraph.open_store(args.store, mode="r"), False
    try:
        return fipgraph.open_store(args.store, mode="a"), True
    except WriterLockedError:
        print("note: another process is writing this store; results are not cached", file=sys.stderr)
        return fipgraph.open_store(args.store, mode="r"), False


def _parse_nodes(store, spec: str | None, where: str | None) -> list[int] | None:
    """'1,2,10-20' and/or an SQL condition over the wide view; None = every node."""
    ids: list[int] | None = None
    if spec:
        ids = []
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            try:
                ids += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
            except ValueError:
                raise ConfigError(f"--nodes {spec!r}: use ids and ranges like 1,2,10-20") from None
    if where:
        from fipgraph.query import select

        chosen = select(store, where=where)
        ids = chosen if ids is None else [n for n in ids if n in set(chosen)]
    return ids


def _tasks(args) -> list:
    from fipgraph.data import make_tasks

    split = json.loads(args.split) if args.split else None
    kwargs = json.loads(args.data_kwargs) if args.data_kwargs else {}
    tasks = make_tasks(args.data, split=split, seed=args.seed, **kwargs)
    if args.task is None:
        return tasks
    names = [t.name for t in tasks]
    for i, t in enumerate(tasks):
        if args.task in (t.name, str(i), t.name.split("/")[-1]):
            return [t]
    raise ConfigError(f"--task {args.task!r} is not one of {names} (or their index)")


def _add_nodes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", help="ids and ranges, e.g. 0,5,10-20 (default: all)")
    p.add_argument("--where", help="SQL condition over the wide view choosing the nodes")


def _add_data(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    p.add_argument("--data", default=default, help="data source (digits, mnist, wiki, a CSV path, ...)")
    p.add_argument("--split", help='class split as JSON, e.g. "[[0,1,2,3,4],[5,6,7,8,9]]"')
    p.add_argument("--task", help="task name or index (default: every task)")
    p.add_argument("--seed", type=int, default=0, help="data split seed (must match the build)")
    p.add_argument("--data-kwargs", help='extra make_tasks options as JSON (the build\'s [data] kwargs), e.g. '
                   '\'{"tokenizer": "smollm2", "objective": "causal", "block_size": 64}\'')


def cmd_pca(args) -> int:
    from fipgraph.query import WeightPCA

    store, can_write = _open(args)
    with store:
        nodes = _parse_nodes(store, args.nodes, args.where)
        params = args.params.split(",") if args.params else None
        pca = WeightPCA(args.n_components, nodes=nodes, params=params, method=args.method,
                        record=can_write and not args.no_record).fit(store)
        print(f"{len(pca.nodes_)} nodes, {pca.n_features_in_} weights, method {pca.method_}")
        print("explained variance ratio:", " ".join(f"{v:.4f}" for v in pca.explained_variance_ratio_))
        if pca.record:
            print(f"coordinates recorded as evals: dataset 'pca', metrics pc1..pc{pca.n_components_}")
    return 0


def _score(args, fn) -> int:
    store, can_write = _open(args)
    with store:
        nodes = _parse_nodes(store, args.nodes, args.where)
        for task in _tasks(args):
            kw = {"mask_token_id": args.mask_token_id} if fn.__name__ == "perplexity" else {}
            df = fn(store, nodes, task, batch_size=args.batch_size, max_batches=args.max_batches,
                    recompute=args.recompute, record=can_write, **kw)
            print(f"# {df.attrs['dataset']}")
            print(df.to_string())
    return 0


def cmd_evaluate(args) -> int:
    from fipgraph.query import evaluate

    return _score(args, evaluate)


def cmd_perplexity(args) -> int:
    from fipgraph.query import perplexity

    return _score(args, perplexity)


def cmd_select(args) -> int:
    from fipgraph.query import pareto, select, select_sql

    store, _ = _open(args, write=False)
    with store:
        if args.maximize or args.minimize:
            ids = pareto(store, maximize=args.maximize or [], minimize=args.minimize or [], where=args.where)
        else:
            if args.show_sql:
                print(select_sql(store, args.where, args.order_by, args.limit), file=sys.stderr)
            ids = select(store, where=args.where, order_by=args.order_by, limit=args.limit)
        print(" ".join(map(str, ids)))
    return 0


def cmd_ensemble(args) -> int:
    from fipgraph.query import ensemble

    store, can_write = _open(args)
    with store:
        query = _tasks(args)[0] if args.strategy == "diverse" and args.data else None
        ens = ensemble(store, args.k, where=args.where, strategy=args.strategy, metric=args.metric,
                       descending=not args.ascending, h_metric=args.h_metric, query=query,
                       name=args.name, record=can_write, max_drop=None if args.max_drop < 0 else args.max_drop)
        print("members:", " ".join(map(str, ens.node_ids)))
        if getattr(ens, "name", None):
            print(f"recorded as ensemble {ens.name!r}")
        if args.export:
            print("exported to", ens.export(args.export))
    return 0


def cmd_spectrum(args) -> int:
    from fipgraph.query import spectrum

    store, can_write = _open(args)
    with store:
        task = _tasks(args)[0]
        res = spectrum(store, args.node, task, k=args.k, n_examples=args.n_examples,
                       threshold=args.threshold, record=can_write)
        print(f"node {res['node_id']} on {res['dataset']}: top {len(res['eigenvalues'])} eigenvalues of g")
        print(" ".join(f"{v:.4g}" for v in res["eigenvalues"]))
        print(f"fraction of g's eigenvalues < {args.threshold:g}: between {res['g_frac_small_lo']:.6f} "
              f"and {res['g_frac_small_hi']:.6f} (top-k only: {res['g_frac_small_topk']:.3f})")
    return 0


def cmd_plot(args) -> int:
    from fipgraph.query.plot import plot_graph, plot_run

    store, can_write = _open(args)
    with store:
        if args.what == "graph":
            out = plot_graph(store, args.out or "graph.png", args.color, fit_if_missing=can_write,
                             log_color=args.log)
        else:
            if args.run is None:
                raise ConfigError("fipgraph plot run needs --run NAME_OR_ID")
            run = int(args.run) if args.run.isdigit() else args.run
            out = plot_run(store, run, args.out or "run.png", args.metrics.split(",") if args.metrics else None)
        print("wrote", out)
    return 0


def cmd_robustness(args) -> int:
    from fipgraph.query.robustness import ensemble_robustness

    store, can_write = _open(args)
    with store:
        task = _tasks(args)[0]
        x, y = task.test["x"][: args.n], task.test["labels"][: args.n]
        sur = args.surrogate
        if sur is not None and not sur.isdigit():  # a run name: its last node
            df = store.sql("select max(n.node_id) as n from nodes n join runs r using (run_id) where r.name = ?", [sur])
            if df.empty or df["n"].isna().all():
                raise ConfigError(f"--surrogate {sur!r} is neither a node id nor a run name in the store")
            sur = str(int(df["n"][0]))
        res = ensemble_robustness(store, args.ensemble, x, y, n_classes=task.n_classes, eps=args.eps,
                                  surrogate=int(sur) if sur is not None else None, max_iter=args.max_iter,
                                  eps_step=args.eps_step, clip=tuple(args.clip) if args.clip else None,
                                  joint_n=args.joint_n, whitebox_members=args.whitebox_members,
                                  probe_n=args.probe_n, record=can_write)
        for key, v in res.items():
            print(f"{key}\t{v:.6g}")
        if can_write:
            print(f"recorded as evals of node {store.ensemble_spec(args.ensemble)['members'][0]}, "
                  f"dataset 'ensemble:{args.ensemble}'")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pca", help="weight-space PCA of stored networks (coords recorded as evals)")
    add_store_argument(p)
    _add_nodes(p)
    p.add_argument("-n", "--n-components", type=int, default=2)
    p.add_argument("--params", help="comma-separated parameter names or prefixes (default: all)")
    p.add_argument("--method", default="auto", choices=["auto", "gram", "randomized"])
    p.add_argument("--no-record", action="store_true", help="do not write coordinates to the store")
    p.set_defaults(func=cmd_pca)

    for name, fn, hlp in (("evaluate", cmd_evaluate, "accuracy and loss per node (cached)"),
                          ("perplexity", cmd_perplexity, "exp(mean cross-entropy) per node (cached)")):
        p = subparsers.add_parser(name, help=hlp)
        add_store_argument(p)
        _add_nodes(p)
        _add_data(p)
        p.add_argument("--batch-size", type=int, default=256 if name == "evaluate" else 32)
        p.add_argument("--max-batches", type=int)
        p.add_argument("--recompute", action="store_true", help="ignore cached values")
        if name == "perplexity":
            p.add_argument("--mask-token-id", type=int, help="[MASK] id for masked LMs")
        p.set_defaults(func=fn)

    p = subparsers.add_parser("select", help="node ids meeting constraints, or a Pareto front")
    add_store_argument(p)
    p.add_argument("--where", help="SQL condition over the wide view, e.g. \"task1_accuracy >= 0.9 AND sparsity >= 0.5\"")
    p.add_argument("--order-by", action="append", help="column; prefix '-' for descending, written --order-by=-col (repeatable)")
    p.add_argument("--limit", type=int)
    p.add_argument("--maximize", action="append", help="Pareto objective to maximise (repeatable)")
    p.add_argument("--minimize", action="append", help="Pareto objective to minimise (repeatable)")
    p.add_argument("--show-sql", action="store_true")
    p.set_defaults(func=cmd_select)

    p = subparsers.add_parser("ensemble", help="choose k networks as an ensemble and record it")
    add_store_argument(p)
    p.add_argument("-k", type=int, required=True)
    p.add_argument("--strategy", default="robust", choices=["robust", "spread", "diverse", "top"],
                   help="robust: the k lowest H (the paper's H <= delta); spread: farthest points in weight space "
                        "among candidates within --max-drop of the best accuracy; diverse; top")
    p.add_argument("--where", help="SQL condition over the wide view restricting the candidates")
    p.add_argument("--metric", help="ranking column for --strategy top; accuracy column for spread (default *_accuracy)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="spread: accuracy a member may lose against the best candidate (0.01 = 1 point; -1 = no bound)")
    p.add_argument("--ascending", action="store_true", help="for top: smaller metric is better")
    p.add_argument("--h-metric", default="H", help="column holding H for --strategy robust")
    p.add_argument("--name", help="name to record the ensemble under")
    p.add_argument("--export", help="directory to write ensemble.safetensors + ensemble.json")
    _add_data(p, default=None)
    p.set_defaults(func=cmd_ensemble)

    p = subparsers.add_parser("robustness", help="PGD (transfer from a surrogate, white-box), diversity, coherence of a recorded ensemble")
    add_store_argument(p)
    p.add_argument("--ensemble", required=True, help="name in the store's ensembles table")
    p.add_argument("--surrogate", help="node id or run name (its last node) the transfer attack is made on")
    p.add_argument("--eps", type=float, required=True, help="l_inf PGD budget in input units")
    p.add_argument("--eps-step", type=float, help="PGD step (default eps/4)")
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="valid input range (default: the inputs' min, max)")
    p.add_argument("-n", "--n", type=int, default=1000, help="first n test inputs of the task")
    p.add_argument("--joint-n", type=int, help="attack the ensemble as a whole on the first N of them (0 = skip; default all)")
    p.add_argument("--whitebox-members", action="store_true", help="also attack each member on its own")
    p.add_argument("--probe-n", type=int, default=200, help="inputs for diversity and coherence")
    _add_data(p)
    p.set_defaults(func=cmd_robustness)

    p = subparsers.add_parser("spectrum", help="top eigenvalues of the metric tensor at a node")
    add_store_argument(p)
    p.add_argument("--node", type=int, required=True)
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--threshold", type=float, default=1e-3)
    _add_data(p)
    p.set_defaults(func=cmd_spectrum)

    p = subparsers.add_parser("plot", help="PNG: graph in PCA coloured by a metric, or a run's metrics")
    add_store_argument(p)
    p.add_argument("what", choices=["graph", "run"])
    p.add_argument("--color", help="wide-view column colouring the nodes (graph)")
    p.add_argument("--log", action="store_true", help="log10 colour scale (e.g. perplexity)")
    p.add_argument("--run", help="run name or id (run)")
    p.add_argument("--metrics", help="comma-separated columns (run; default every *_accuracy)")
    p.add_argument("--out", help="output PNG path")
    p.set_defaults(func=cmd_plot)
