"""CLI: pca, perplexity, evaluate, select, ensemble, robustness, spectrum, plot, interpolate (thin
wrappers of fipgraph.query).

Every command reads the store read-only, so a query never holds the writer lock a build needs.
Commands that record results (evaluations, PCA coordinates, ensembles) keep them and write them in
one short session at the end, and say so; `--no-record` leaves the store untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from typing import Iterator

from fipgraph.cli import add_store_argument
from fipgraph.errors import ConfigError
from fipgraph.heads import HEADS


@contextmanager
def _reading(args, records: bool = True) -> Iterator:
    """The store opened read-only (nothing is created where there is no store). With `records`
    (and no --no-record), what the query records is written under the writer lock at the end."""
    from fipgraph.query.catalog import require_store
    from fipgraph.query.recording import DeferredWrites
    from fipgraph.storage import open_store

    require_store(args.store)
    records = records and not getattr(args, "no_record", False)
    with open_store(args.store, mode="r") as store:
        view = DeferredWrites(store) if records else store
        yield view
        if records and view.pending:
            if view.commit():
                print(f"recorded in {args.store} (the writer lock was taken only to write the results)",
                      file=sys.stderr)
            else:
                print(f"note: another process (a build?) holds the writer lock of {args.store}; results were "
                      "printed but not recorded. Rerun when it is done to record them", file=sys.stderr)


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


def _tasks(args, store=None, nodes=None) -> list:
    """The tasks named by the data flags, each defaulting to what the chosen nodes' runs recorded."""
    from fipgraph.query.recorded import recorded_tasks

    return recorded_tasks(store, nodes, task=args.task, head=args.head, source=args.data,
                          split=_json_option("--split", args.split), seed=args.seed,
                          kwargs=_json_option("--data-kwargs", args.data_kwargs))


def _json_option(flag: str, text: str | None):
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {text!r} is not JSON ({exc.msg}); e.g. --split '[[0,1,2,3,4],[5,6,7,8,9]]'") from None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)")


def _add_nodes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", help="ids and ranges, e.g. 0,5,10-20 (default: all)")
    p.add_argument("--where", help="SQL condition over the wide view choosing the nodes")


def _add_data(p: argparse.ArgumentParser) -> None:
    rec = "(default: the [data] the chosen nodes' runs were built with)"
    p.add_argument("--data", help=f"data source: digits, mnist, wiki, a CSV path, package.module:function {rec}")
    p.add_argument("--split", help=f'class split as JSON, e.g. "[[0,1,2,3,4],[5,6,7,8,9]]" {rec}')
    p.add_argument("--task", help="task name or index (default: every task)")
    p.add_argument("--head", choices=list(HEADS),
                   help="label layout of the tasks (default: the data.head the nodes were built with)")
    p.add_argument("--seed", type=int, help=f"data split seed {rec}")
    p.add_argument("--data-kwargs", help='extra make_tasks options as JSON (the build\'s [data] kwargs), e.g. '
                   f'\'{{"tokenizer": "smollm2", "objective": "causal", "block_size": 64}}\' {rec}')


def cmd_pca(args) -> int:
    from fipgraph.query import WeightPCA

    with _reading(args) as store:
        nodes = _parse_nodes(store, args.nodes, args.where)
        params = args.params.split(",") if args.params else None
        pca = WeightPCA(args.n_components, nodes=nodes, params=params, method=args.method,
                        record=not args.no_record, device=args.device).fit(store)
        print(f"{len(pca.nodes_)} nodes, {pca.n_features_in_} weights, method {pca.method_}")
        print("explained variance ratio:", " ".join(f"{v:.4f}" for v in pca.explained_variance_ratio_))
        if pca.record:
            print(f"coordinates as evals: dataset 'pca', metrics pc1..pc{pca.n_components_}")
    return 0


def _score(args, fn) -> int:
    with _reading(args) as store:
        nodes = _parse_nodes(store, args.nodes, args.where)
        kw = {}
        if fn.__name__ == "perplexity":
            kw = {"mask_token_id": args.mask_token_id, "tokenizer": args.tokenizer}
        if getattr(args, "text", None):
            from fipgraph.query.text import read_texts

            datasets = [read_texts(args.text)]
            kw["max_length"] = args.max_length
        else:
            kw.pop("tokenizer", None)
            datasets = _tasks(args, store, nodes)
        for data in datasets:
            df = fn(store, nodes, data, batch_size=args.batch_size, max_batches=args.max_batches,
                    recompute=args.recompute, device=args.device, **kw)
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
    from fipgraph.cli.store_cmds import format_csv, format_json, format_table
    from fipgraph.query import pareto, select, select_sql
    from fipgraph.query.catalog import open_catalog
    from fipgraph.query.selection import columns_named, selection_rows

    with open_catalog(args.store) as store:  # the catalog only: no weights, no torch
        if args.maximize or args.minimize:
            ids = pareto(store, maximize=args.maximize or [], minimize=args.minimize or [], where=args.where)
        else:
            if args.show_sql:
                print(select_sql(store, args.where, args.order_by, args.limit), file=sys.stderr)
            ids = select(store, where=args.where, order_by=args.order_by, limit=args.limit)
        if args.ids:
            print(" ".join(map(str, ids)))
            return 0
        named = columns_named(store, args.where, args.order_by, args.maximize, args.minimize)
        res = selection_rows(store, ids, named)
    formats = {"table": format_table, "csv": format_csv, "json": format_json}
    print(formats[args.format](res.columns, res.rows).rstrip("\n"))
    return 0


def _diverse_query(args, store):
    """--strategy diverse: disagreement on the data's first task (--data, else the recorded [data]); weight
    distance where neither tells (nodes without a recorded [data], or of several builds)."""
    from fipgraph.query.recorded import recorded_data

    candidates = _parse_nodes(store, None, args.where)
    if args.data is None:
        try:
            if recorded_data(store, candidates) is None:
                return None
        except ConfigError:
            return None
    return _tasks(args, store, candidates)[0]


def cmd_ensemble(args) -> int:
    from fipgraph.query import ensemble

    with _reading(args) as store:
        query = _diverse_query(args, store) if args.strategy == "diverse" else None
        ens = ensemble(store, args.k, where=args.where, strategy=args.strategy, metric=args.metric,
                       descending=not args.ascending, h_metric=args.h_metric, query=query,
                       name=args.name, record=not args.no_record, device=args.device,
                       max_drop=None if args.max_drop < 0 else args.max_drop)
        print("members:", " ".join(map(str, ens.node_ids)))
        if getattr(ens, "name", None):
            print(f"ensemble {ens.name!r}")
        if args.export:
            print("exported to", ens.export(args.export))
    return 0


def cmd_spectrum(args) -> int:
    from fipgraph.query import spectrum

    with _reading(args) as store:
        task = _tasks(args, store, [args.node])[0]
        res = spectrum(store, args.node, task, k=args.k, n_examples=args.n_examples,
                       threshold=args.threshold, record=not args.no_record, device=args.device)
        print(f"node {res['node_id']} on {res['dataset']}: top {len(res['eigenvalues'])} eigenvalues of g")
        print(" ".join(f"{v:.4g}" for v in res["eigenvalues"]))
        print(f"fraction of g's eigenvalues < {args.threshold:g}: between {res['g_frac_small_lo']:.6f} "
              f"and {res['g_frac_small_hi']:.6f} (top-k only: {res['g_frac_small_topk']:.3f})")
    return 0


def cmd_plot(args) -> int:
    from fipgraph.query.plot import plot_graph, plot_run

    with _reading(args, records=args.what == "graph") as store:  # graph: PCA coordinates if missing
        if args.what == "graph":
            out = plot_graph(store, args.out or "graph.png", args.color, log_color=args.log)
        else:
            if args.run is None:
                raise ConfigError("fipgraph plot run needs --run NAME_OR_ID")
            run = int(args.run) if args.run.isdigit() else args.run
            out = plot_run(store, run, args.out or "run.png", args.metrics.split(",") if args.metrics else None)
        print("wrote", out)
    return 0


def _members(store, name: str) -> list[int] | None:
    """The node ids of a recorded ensemble (None if there is none by that name: robustness says so)."""
    rows = store.sql("select members from ensembles where name = ?", [name])["members"].tolist()
    return [int(n) for n in json.loads(rows[0])] if rows else None


def cmd_robustness(args) -> int:
    from fipgraph.query._common import node_or_run
    from fipgraph.query.robustness import ensemble_robustness

    with _reading(args) as store:
        task = _tasks(args, store, _members(store, args.ensemble))[0]
        x, y = task.test["x"][: args.n], task.test["labels"][: args.n]
        sur = node_or_run(store, args.surrogate, "--surrogate") if args.surrogate is not None else None
        res = ensemble_robustness(store, args.ensemble, x, y, n_classes=task.n_classes, eps=args.eps,
                                  surrogate=sur, max_iter=args.max_iter,
                                  eps_step=args.eps_step, clip=tuple(args.clip) if args.clip else None,
                                  joint_n=args.joint_n, whitebox_members=args.whitebox_members,
                                  probe_n=args.probe_n, record=not args.no_record, device=args.device)
        for key, v in res.items():
            print(f"{key}\t{v:.6g}")
        if not args.no_record:
            print(f"in table ensemble_evals, name '{args.ensemble}'")
    return 0


def cmd_interpolate(args) -> int:
    from fipgraph.query._common import node_or_run
    from fipgraph.query.interpolation import interpolate, plot_interpolation

    with _reading(args) as store:
        a, b = node_or_run(store, args.a, "A"), node_or_run(store, args.b, "B")
        tasks = _tasks(args, store, [a, b])
        df = interpolate(store, a, b, tasks, points=args.points, batch_size=args.batch_size,
                         max_batches=args.max_batches, record=not args.no_record, device=args.device)
        print(df.to_string(index=False))
        barrier = df.attrs["barrier"]
        print("loss barrier (max over t of loss(t) - linear interpolation of the ends): "
              + ", ".join(f"{k} {v:.4g}" for k, v in barrier.items()))
        out = plot_interpolation(df, args.out or f"interpolate_{a}_{b}.png")
        print("wrote", out)
    return 0


def _add_no_record(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--no-record", action="store_true",
                   help=f"do not write {what} to the store (it is then never opened for writing)")


def _add_recording_query(sub, name: str, func, hlp: str, what: str, data: bool = True):
    """A sub-command with --store, --device and --no-record (and the data options unless data is False)."""
    p = sub.add_parser(name, help=hlp)
    add_store_argument(p)
    _add_device(p)
    _add_no_record(p, what)
    if data:
        _add_data(p)
    p.set_defaults(func=func)
    return p


def register(subparsers) -> None:
    _register_weights_and_scores(subparsers)
    _register_selection(subparsers)
    _register_geometry(subparsers)


def _register_weights_and_scores(subparsers) -> None:
    p = _add_recording_query(subparsers, "pca", cmd_pca, "weight-space PCA of stored networks (coords recorded "
                             "as evals)", "the coordinates", data=False)
    _add_nodes(p)
    p.add_argument("-n", "--n-components", type=int, default=2)
    p.add_argument("--params", help="comma-separated parameter names or prefixes (default: all)")
    p.add_argument("--method", default="auto", choices=["auto", "gram", "sketch", "randomized"],
                   help="gram: exact (default up to max_gram_nodes); sketch: one pass, approximate; "
                        "randomized: exact to its power iterations, several passes")

    for name, fn, hlp in (("evaluate", cmd_evaluate, "accuracy and loss per node (cached)"),
                          ("perplexity", cmd_perplexity, "exp(mean cross-entropy) per node (cached)")):
        p = _add_recording_query(subparsers, name, fn, hlp, "the scores")
        _add_nodes(p)
        p.add_argument("--batch-size", type=int, default=256 if name == "evaluate" else 32)
        p.add_argument("--max-batches", type=int)
        p.add_argument("--recompute", action="store_true", help="ignore cached values")
        if name == "perplexity":
            p.add_argument("--mask-token-id", type=int, help="[MASK] id for masked LMs")
            p.add_argument("--text", metavar="FILE", help="score this UTF-8 file instead of --data: one document "
                           "per non-empty line, tokenized with each node's tokenizer")
            p.add_argument("--tokenizer", help="with --text: a tokenizer name ('smollm2', 'minilm') or folder, "
                           "instead of the one the node records")
            p.add_argument("--max-length", type=int, default=512, help="with --text: tokens kept per document")



def _register_selection(subparsers) -> None:
    p = subparsers.add_parser("select", help="the nodes meeting constraints, or a Pareto front, as a table "
                              "(reads the catalog only)")
    add_store_argument(p)
    p.add_argument("--where", help="SQL condition over the wide view, e.g. \"task1_accuracy >= 0.9 AND sparsity >= 0.5\"")
    p.add_argument("--order-by", action="append", help="column; prefix '-' for descending, written --order-by=-col (repeatable)")
    p.add_argument("--limit", type=int)
    p.add_argument("--maximize", action="append", help="Pareto objective to maximise (repeatable)")
    p.add_argument("--minimize", action="append", help="Pareto objective to minimise (repeatable)")
    p.add_argument("--show-sql", action="store_true")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="node, run, step and the columns --where/--order-by/--maximize/--minimize name; csv/json "
                        "keep every float bit (as `fipgraph sql`)")
    p.add_argument("--ids", action="store_true", help="only the node ids, space-separated (for scripts)")
    p.set_defaults(func=cmd_select)

    p = _add_recording_query(subparsers, "ensemble", cmd_ensemble, "choose k networks as an ensemble and "
                             "record it", "the ensemble")
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

    p = _add_recording_query(subparsers, "robustness", cmd_robustness, "PGD (transfer from a surrogate, "
                             "white-box), diversity, coherence of a recorded ensemble", "the results")
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



def _register_geometry(subparsers) -> None:
    p = _add_recording_query(subparsers, "spectrum", cmd_spectrum, "top eigenvalues of the metric tensor at a "
                             "node", "the eigenvalues")
    p.add_argument("--node", type=int, required=True)
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--threshold", type=float, default=1e-3)

    p = _add_recording_query(subparsers, "interpolate", cmd_interpolate, "loss and accuracy along the straight "
                             "segment between two networks (the linear mode-connectivity barrier)", "the curve")
    p.add_argument("a", help="node id or run name (its last node): the segment's start, t = 0")
    p.add_argument("b", help="node id or run name: the segment's end, t = 1")
    p.add_argument("--points", type=int, default=11, help="evaluated points t = 0, 1/(points-1), ..., 1")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--out", help="output PNG (default interpolate_A_B.png)")

    p = subparsers.add_parser("plot", help="PNG: graph in PCA coloured by a metric, or a run's metrics")
    add_store_argument(p)
    p.add_argument("what", choices=["graph", "run"])
    p.add_argument("--color", help="wide-view column colouring the nodes (graph)")
    p.add_argument("--log", action="store_true", help="log10 colour scale (e.g. perplexity)")
    p.add_argument("--run", help="run name or id (run)")
    p.add_argument("--metrics", help="comma-separated columns (run; default every *_accuracy)")
    p.add_argument("--out", help="output PNG path")
    p.set_defaults(func=cmd_plot)
