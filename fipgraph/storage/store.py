"""The Store: append networks as nodes, read them back bit-exact, query them with SQL.

Layout of a store directory (see store/README.md):
    fipgraph.json     format marker and version          writer.lock   single-writer flock
    metrics.duckdb    nodes, edges, evals, runs, archs, storage (the commit point of a node)
    weights.zarr/     <arch_id>/<dtype>[.q8|.scale]: one row per node, residual to its lineage or keyframe
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import networkx as nx
import numpy as np
import pandas as pd
import torch

from fipgraph.errors import (FipgraphError, FormatVersionError, NodeNotFoundError, QueryError,
                             ReadOnlyStoreError, StoreNotFoundError)
from fipgraph.storage import codec, exit_hook, stream
from fipgraph.storage.catalog import CatalogOp, to_json
from fipgraph.storage.inputs import check_finite, model_spec_of, normalise_evals, state_dict_of
from fipgraph.storage.layout import Layout
from fipgraph.storage.options import ENCODINGS, StoreOptions
from fipgraph.storage.published import acquire_writer, open_catalog
from fipgraph.storage.reader import NodeInfo, RowReader
from fipgraph.storage.recorder import Recorder, end_open_recorders
from fipgraph.storage.remote import RemotePath, resolve
from fipgraph.storage.sidecar import StoreFiles
from fipgraph.storage.sql import FIRST_TAGGED, LAST_NODE_OF_RUN_ID, NodeAt, decode_tags, tag_path
from fipgraph.storage.weights import WeightArrays
from fipgraph.storage.writer import EvalJob, NodeJob, OpJob, Writer

if TYPE_CHECKING:
    from fipgraph.storage.prewrite import PrewrittenNode

FORMAT_VERSION = 1
MARKER = "fipgraph.json"


def open_store(path: str | Path = "store", mode: str = "a", **options: Any) -> "Store":
    """Open (mode="a": create if needed, one writer) or read (mode="r") the store at ``path``: a folder, or a
    URL on object storage (``s3://bucket/prefix``, any fsspec URL; see docs/storage-remote.md).

    Options: ``encoding`` ("lossless" | "int8"), ``keyframe_every`` (32), ``commit_interval`` (0.25 s; the
    writer spaces commits further, up to 2 s, when one takes over a tenth of that), ``max_pending_bytes`` (1 GiB
    of snapshots queued before append blocks; also the bound on idle snapshot buffers kept for reuse), ``cache_bytes`` (1 GiB of
    decoded rows kept for reads), ``recent_bytes`` (512 MiB of recently written nodes the writer keeps as
    parents, beyond the last one or two a chain needs; rows whose two newest do not fit are encoded against
    the parent alone), ``durable`` (False; True fsyncs chunk files and the catalog before a
    commit is reported, so a power loss loses no committed node), ``lock_timeout`` (60 s).
    For URLs: ``storage_options`` (fsspec options such as key, secret, endpoint_url; by default the AWS_*
    environment), ``lease_ttl`` (30 s, or FIPGRAPH_LEASE_TTL: how long a killed writer keeps the next one out).
    ``writer_threads``: threads that encode and write large rows (default: the cores torch leaves free, 1-4).
    ``compressor``: "zstd" (default) or "lz4" for rows with chunk files of their own (faster to write, larger
    until ``fipgraph compact`` recompresses them with zstd)."""
    return Store(path, mode, **options)


def default_writer_threads() -> int:
    """Cores the build's torch threads leave free (at least 1, at most 4): zstd and numpy release the GIL."""
    import os

    return max(1, min(4, (os.cpu_count() or 1) - torch.get_num_threads()))


class Store:
    def __init__(self, path: str | Path = "store", mode: str = "a", options: StoreOptions | None = None, *,
                 storage_options: dict | None = None, **keywords: Any) -> None:
        """``options``, or the same as keywords (``encoding="int8"``; they override ``options``'s): see StoreOptions.
        ``storage_options``: credentials and endpoint of a URL (never part of the options: they hold secrets)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read-only) or 'a' (append), got {mode!r}")
        self.options = opts = dataclasses.replace(options or StoreOptions(), **keywords)  # checked here, once
        # a bucket is checked here (scheme installed, bucket there, credentials accepted): nothing written yet
        self.root = resolve(path, storage_options)
        self.mode, self.remote = mode, isinstance(self.root, RemotePath)
        durable = opts.durable and not self.remote  # an object store's PUT is durable when it returns
        self.files = StoreFiles(self.root, durable=durable)  # build log and optimizer state beside the store
        self.encoding, self.keyframe_every, self.tolerance = ENCODINGS[opts.encoding], opts.keyframe_every, float(opts.tolerance)
        self._lock, self._tmp = None, None
        self._open_recorders: set = set()  # runs recording into this store whose with-block has not ended
        if mode == "a":
            self._lock = acquire_writer(self.root, opts.lease_ttl)
        try:
            self.catalog, self._tmp = open_catalog(self.root, mode, self._lock, lock_timeout=opts.lock_timeout,
                                                   durable=durable)
            self._check_marker(create=mode == "a")
            self.weights = WeightArrays(self.root / "weights.zarr", read_only=mode == "r", durable=durable,
                                        compressor=opts.compressor)
            self._layouts: dict[str, Layout] = {}
            self._index: dict[int, NodeInfo] = {}
            self._run_names: dict[str, int] = {}
            self._reader = RowReader(self.weights, self.layout, self._info, self.root, cache_bytes=opts.cache_bytes)
            self._new_ensembles: set[str] = set()
            self._load_index()
        except BaseException:
            self._release_lock()
            raise
        self._writer = None
        if mode == "a":
            self.catalog.create()  # idempotent: adds tables introduced since the store was made
            pairs = set(map(tuple, self.catalog.query("SELECT DISTINCT dataset, metric FROM evals").values.tolist()))
            self._next_id = max(self._index, default=-1) + 1
            self._next_run = int(self.catalog.query("SELECT coalesce(max(run_id), -1) AS m FROM runs")["m"][0]) + 1
            rows = self.catalog.query("SELECT arch_id, max(row) AS r FROM storage GROUP BY arch_id")
            self._next_row = dict(zip(rows["arch_id"], rows["r"].astype(int) + 1))
            self._archs = set(self._next_row)  # architectures in the catalog or queued (their archs row written)
            self._pending: set[int] = set()
            self._writer = Writer(self.catalog, self.weights, self._decode, self._path_length, self._committed, pairs,
                                  commit_interval=opts.commit_interval, max_pending_bytes=opts.max_pending_bytes,
                                  recent_bytes=opts.recent_bytes,
                                  threads=default_writer_threads() if opts.writer_threads is None else opts.writer_threads)
            self._writer.start()
            exit_hook.track(self)

    # -- opening ---------------------------------------------------------------------------------
    def _check_marker(self, create: bool) -> None:
        marker = self.root / MARKER
        if not marker.exists():
            if not create:
                raise StoreNotFoundError(f"{self.root} is not a fipgraph store (no {MARKER}); "
                                         "create one with fipgraph.open_store(path, mode='a') or `fipgraph build`")
            self._clear_partial()
            self.catalog.create()  # on object storage: also published
            # the marker is written last: a store whose creation was interrupted is simply recreated
            marker.write_text(json.dumps({"format": "fipgraph-store", "format_version": FORMAT_VERSION}))
        elif self.remote and self.mode == "a":
            self.catalog.pull()  # the writer starts from the latest published snapshot
        meta = json.loads(marker.read_text())
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise FormatVersionError(f"{self.root} was written with store format {meta['format_version']}, "
                                     f"this fipgraph reads up to {FORMAT_VERSION}: upgrade with `pip install -U fipgraph`")

    def _clear_partial(self) -> None:
        """Remove what an interrupted creation left (no marker: nothing was committed there); refuse a
        non-empty folder or prefix that is not a store."""
        partial = {"metrics.duckdb", "metrics.duckdb.wal", "weights.zarr"}
        stray = [p.name for p in self.root.iterdir()
                 if p.name not in {"README.md", ".gitignore", "writer.lock", "writer.lease"} | partial]
        if stray:
            raise StoreNotFoundError(f"{self.root} is not empty and not a fipgraph store (found {stray[:5]}); "
                                     "choose an empty or new directory" + (" or prefix" if self.remote else ""))
        if self.remote:
            self.catalog.reset()
        for name in partial:
            target = self.root / name
            if isinstance(target, RemotePath):
                target.remove_tree()
            elif target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def _load_index(self, after: int = -1) -> None:
        df = self.catalog.query(
            "SELECT s.node_id, n.parent_id, s.arch_id, s.row, s.encoding, s.chain_depth, n.path_length, s.checksum "
            "FROM storage s JOIN nodes n USING (node_id) WHERE s.node_id > ? ORDER BY s.node_id", [after])
        parents = [None if p != p else int(p) for p in df["parent_id"].astype("float64").tolist()]  # NaN -> None
        self._index.update(
            (n, NodeInfo(p, a, r, e, d, pl, c))
            for n, p, a, r, e, d, pl, c in zip(df["node_id"].tolist(), parents, df["arch_id"].tolist(), df["row"].tolist(),
                                               df["encoding"].tolist(), df["chain_depth"].tolist(),
                                               df["path_length"].tolist(), df["checksum"].tolist())
        )
        if self.mode == "a" or after < 0:
            runs = self.catalog.query("SELECT run_id, name FROM runs")
            self._run_names.update(zip(runs["name"], runs["run_id"].astype(int)))

    def _info(self, node_id: int) -> NodeInfo:
        if not isinstance(node_id, (int, np.integer)) or isinstance(node_id, bool):
            raise NodeNotFoundError(f"node ids are integers, got {node_id!r}")
        node_id = int(node_id)
        if node_id not in self._index and self.mode == "r":
            self._load_index(after=max(self._index, default=-1))  # a writer may have committed it since
        if node_id not in self._index:
            known = f"ids 0..{max(self._index)}" if self._index else "no nodes yet"
            raise NodeNotFoundError(f"no node {node_id} in store {self.root} ({known}); "
                                    "list them with store.sql('SELECT node_id FROM nodes')")
        return self._index[node_id]

    def layout(self, arch_id: str) -> Layout:
        if arch_id not in self._layouts:
            spec = self.catalog.query("SELECT spec FROM archs WHERE arch_id = ?", [arch_id])["spec"]
            self._layouts[arch_id] = Layout.from_arch_spec(spec[0])
        return self._layouts[arch_id]

    # -- writing ---------------------------------------------------------------------------------
    def _writable(self) -> Writer:
        if self._writer is None:
            raise ReadOnlyStoreError(f"store {self.root} was opened read-only (mode='r'); open it with mode='a' to write")
        return self._writer

    def append(self, weights: torch.nn.Module | Mapping[str, torch.Tensor], *, parent: int | None = None,
               parents: Sequence[int] | Mapping[int, float] | None = None, run: int | None = None,
               op: str | None = None, step: int | None = None,
               metrics: Mapping | None = None, tags: Mapping | None = None, output_distance: float | None = None,
               allow_nonfinite: bool = False, allow_arch_change: bool = False) -> int:
        """Add a network as a node (child of ``parent``) and return its id; the write commits in the background.

        ``parents``: a node made from several (a merge): their ids, or {id: weight}, primary first; ``parent`` may
        then be left out (it is the first). Each parent gets an edge with its Euclidean distance, and all of them
        a row in ``node_parents``; ``nodes.parent_id`` is the primary one."""
        writer = self._writable()
        parent, parent_rows = self._several_parents(parent, parents)
        state = state_dict_of(weights)
        parent_info = None if parent is None else self._info(parent)
        state, layout, same_arch = self._layout_against_parent(state, parent_info)
        if parent_info is not None and not same_arch and not allow_arch_change:
            layout.check_matches(self.layout(parent_info.arch_id), f"parent node {parent}")
        self._check_run(run)
        if not allow_nonfinite:
            check_finite(state)
        node_id = self._next_id
        node_row, evals = self._catalog_rows(node_id, parent, run, op, step, layout, metrics, tags)
        arch_spec = None
        if layout.arch_id not in self._archs:
            arch_spec = {"params": layout.to_spec(), "model": model_spec_of(weights)}
            if layout.ties:
                arch_spec["ties"] = layout.ties_spec()
        writer.wait_for_room(sum(g.n_words * np.dtype(g.word).itemsize for g in layout.groups))
        rows = layout.pack(state, take=writer.buffers.take)

        depth = parent_info.chain_depth + 1 if same_arch and parent_info.chain_depth + 1 < self.keyframe_every else 0
        encoding = self._encoding_at(depth, row_bytes=sum(a.nbytes for a in rows.values()))
        grandparent = parent_info.parent_id if codec.uses_grandparent(encoding) else None
        job = NodeJob(node_id, parent, grandparent, layout, rows, self._next_row.get(layout.arch_id, 0), encoding, depth,
                      same_arch, node_row, evals, output_distance, arch_spec,
                      nbytes=int(sum(a.nbytes for a in rows.values())), tolerance=self.tolerance,
                      parent_rows=[(node_id, *r) for r in parent_rows],
                      other_parents=[p for p, _w, pos in parent_rows
                                     if pos and self._index[p].arch_id == layout.arch_id])
        return self._enqueue(writer, job)

    def _check_run(self, run: int | None) -> None:
        if run is not None and int(run) not in self._run_names.values():
            raise FipgraphError(f"no run {run} in store {self.root}; create it with store.start_run(name, op, config)")

    def _catalog_rows(self, node_id: int, parent: int | None, run: int | None, op: str | None, step: int | None,
                      layout: Layout, metrics: Mapping | None, tags: Mapping | None) -> tuple[dict, list]:
        """The node's ``nodes`` columns known at append time, and its ``evals`` rows."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        evals = [(node_id, ds, m, v, now) for ds, m, v in normalise_evals(metrics)]
        node_row = dict(node_id=node_id, parent_id=parent, run_id=run, op=op, step=step, created_at=now,
                        arch_id=layout.arch_id, n_params=layout.n_params,
                        tags=to_json(dict(tags)) if tags is not None else None)
        return node_row, evals

    def _enqueue(self, writer: Writer, job: NodeJob) -> int:
        arch_id = job.layout.arch_id
        self._layouts[arch_id] = job.layout
        self._archs.add(arch_id)
        writer.put(job)
        self._next_id = job.node_id + 1
        self._next_row[arch_id] = max(self._next_row.get(arch_id, 0), job.row + 1)
        self._index[job.node_id] = NodeInfo(job.parent_id, arch_id, job.row, job.encoding, job.chain_depth, None)
        self._pending.add(job.node_id)
        return job.node_id

    # -- nodes written by other processes (Ray workers on shared storage: storage/prewrite.py) ------
    def write_settings(self) -> dict:
        """How this store encodes rows: what a process writing rows for it (append_written) must follow."""
        self._writable()
        return {"encoding": self.encoding, "keyframe_every": self.keyframe_every, "compressor": self.options.compressor,
                "recent_bytes": self._writer.recent_bytes, "durable": self.options.durable and not self.remote}

    def reserve_rows(self, arch_id: str, count: int, align: int = 1) -> int:
        """Reserve ``count`` rows of an architecture's arrays for another process to write (append_written), the
        first a multiple of ``align`` and ``count`` rounded up to one: rows that share a chunk file then never
        belong to two writers. Returns the first row; rows never committed are simply unused."""
        self._writable()
        if not all(isinstance(v, int) and v >= 1 for v in (count, align)):
            raise FipgraphError(f"reserve_rows: count ({count!r}) and align ({align!r}) must be integers >= 1")
        first = -(-self._next_row.get(arch_id, 0) // align) * align
        self._next_row[arch_id] = first + -(-count // align) * align
        return first

    def chain_of(self, node_id: int) -> tuple[str, int, int | None]:
        """(architecture, chain depth, parent) of a node: what a child encoded elsewhere is encoded against."""
        info = self._info(node_id)
        return info.arch_id, int(info.chain_depth), info.parent_id

    def append_written(self, node: PrewrittenNode, *, parent: int | None = None, run: int | None = None,
                       op: str | None = None, step: int | None = None, metrics: Mapping | None = None,
                       tags: Mapping | None = None, output_distance: float | None = None) -> int:
        """Append a node whose rows another process has already encoded and written into this store's weights,
        in a row it reserved (``reserve_rows``): only its catalog rows are queued, in order with every other
        append, and it exists once they commit, as any node. Returns its id."""
        writer = self._writable()
        parent_info = None if parent is None else self._info(parent)
        same_arch = parent_info is not None and parent_info.arch_id == node.arch_id
        if node.chain_depth and not same_arch:
            raise FipgraphError(f"a written node at chain depth {node.chain_depth} needs a parent of architecture "
                                f"{node.arch_id}, got parent {parent!r}; write it as a keyframe (depth 0)")
        self._check_run(run)
        layout = self._written_layout(node)
        node_id = self._next_id
        node_row, evals = self._catalog_rows(node_id, parent, run, op, step, layout, metrics, tags)
        job = NodeJob(node_id, parent, None, layout, None, node.row, node.encoding, node.chain_depth, same_arch,
                      node_row, evals, output_distance, None if layout.arch_id in self._archs else node.arch_spec,
                      written=node)
        return self._enqueue(writer, job)

    def _written_layout(self, node: PrewrittenNode) -> Layout:
        if node.arch_id in self._archs:
            return self.layout(node.arch_id)
        if node.arch_spec is None:
            raise FipgraphError(f"architecture {node.arch_id} is new to store {self.root}: the first written node "
                                "of it must carry its arch_spec")
        layout = Layout.from_spec(node.arch_spec["params"], node.arch_spec.get("ties"))
        if layout.arch_id != node.arch_id:
            raise FipgraphError(f"a written node says architecture {node.arch_id} but its arch_spec is {layout.arch_id}")
        return layout

    def _several_parents(self, parent: int | None, parents) -> tuple[int | None, list[tuple]]:
        """(primary parent, node_parents rows (parent_id, weight, position)) of an append; no rows for one parent."""
        if parents is None:
            return parent, []
        listed = list(parents)
        ids = [int(p) for p in listed]
        if len(set(ids)) != len(ids) or not ids:
            raise FipgraphError(f"parents={listed}: give each parent once, at least one")
        weights = dict(parents) if isinstance(parents, Mapping) else dict.fromkeys(listed)
        if parent is not None and int(parent) != ids[0]:
            raise FipgraphError(f"parent={parent} but parents starts with {ids[0]}: the primary parent is the "
                                "first of parents; leave parent out or put it first")
        for p, w in weights.items():
            self._info(p)  # an unknown id fails here, naming it
            if w is not None and not (isinstance(w, (int, float)) and np.isfinite(w)):
                raise FipgraphError(f"parents: the weight of node {p} is {w!r}; weights are finite numbers")
        rows = [(p, None if w is None else float(w), i) for i, (p, w) in enumerate(zip(ids, weights.values()))]
        return ids[0], rows if len(rows) > 1 else []

    def _layout_against_parent(self, state: dict, parent_info: NodeInfo | None) -> tuple[dict, Layout, bool]:
        """(state, layout, same architecture as the parent): a state whose names only come in another order
        (e.g. safetensors sorts its keys), or a chain begun before ties were recognised, takes the parent's."""
        layout = Layout.of(state)
        if parent_info is None or parent_info.arch_id == layout.arch_id:
            return state, layout, parent_info is not None
        parent_layout = self.layout(parent_info.arch_id)
        same_ties = sorted(t[:2] for t in layout.ties) == sorted(t[:2] for t in parent_layout.ties)
        if sorted(layout.params) == sorted(parent_layout.params) and same_ties:
            return {name: state[name] for name in parent_layout.names}, parent_layout, True
        if layout.ties and layout.untied() == parent_layout:
            return state, parent_layout, True
        return state, layout, False

    def _encoding_at(self, depth: int, row_bytes: int) -> str:
        """The row encoding of a node ``depth`` rows after its chain's keyframe (codec.row_encoding). Rows
        whose two newest do not fit in recent_bytes (e.g. SmolLM2's 538 MB at the default 512 MiB) are encoded
        against the parent, so a build holds one row less (measured in benchmarks/RESULTS.md, issue 14)."""
        return codec.row_encoding(self.encoding, depth, 2 * row_bytes <= self._writer.recent_bytes)

    def _committed(self, jobs: list[NodeJob]) -> None:
        for job in jobs:
            info = self._index[job.node_id]
            info.path_length, info.checksum = job.node_row["path_length"], job.storage_row[5]
            self._pending.discard(job.node_id)

    def _path_length(self, node_id: int) -> float:
        return float(self._index[node_id].path_length or 0.0)

    def add_evals(self, node_id: int, metrics: Mapping) -> None:
        """Attach evaluations ({metric: value} or {dataset: {metric: value}}) to an existing node."""
        self.add_evals_many({node_id: metrics})

    def add_evals_many(self, metrics_by_node: Mapping[int, Mapping]) -> None:
        """add_evals for many nodes at once ({node_id: metrics}), committed together."""
        writer = self._writable()
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        rows = []
        for node_id, metrics in metrics_by_node.items():
            self._info(node_id)
            rows += [(int(node_id), ds, m, v, now) for ds, m, v in normalise_evals(metrics)]
        # the pre-ensemble_evals convention (dataset 'ensemble:<name>' on a member) also lands in ensemble_evals
        known = set(self._ensemble_names()) | self._new_ensembles if any(r[1].startswith("ensemble:") for r in rows) else set()
        ensemble_rows = [(r[1][9:], "", r[2], r[3], now) for r in rows if r[1].startswith("ensemble:") and r[1][9:] in known]
        writer.put(EvalJob(rows, ensemble_rows))

    def add_ensemble_evals(self, name: str, metrics: Mapping) -> None:
        """Record results of a named ensemble as a whole ({metric: v} or {dataset: {metric: v}});
        read them with ``store.sql("SELECT * FROM ensemble_evals")``."""
        writer = self._writable()
        if name not in self._new_ensembles and name not in self._ensemble_names():
            raise FipgraphError(f"no ensemble named {name!r} in {self.root}; record it first with "
                                f"store.add_ensemble(name, members). Recorded: {self._ensemble_names()}")
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        writer.put(EvalJob([], [(name, ds, m, v, now) for ds, m, v in normalise_evals(metrics)]))

    def add_ensemble(self, name: str, members: list[int], rule: Mapping | None = None) -> None:
        """Record a named ensemble (its member node ids and the rule that chose them)."""
        writer = self._writable()
        for n in members:
            self._info(n)
        if name in self._ensemble_names() or name in self._new_ensembles:
            raise FipgraphError(f"an ensemble named {name!r} already exists in {self.root}; choose another name")
        row = (name, to_json([int(n) for n in members]), to_json(dict(rule or {})),
               dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
        writer.put(OpJob(CatalogOp("insert_ensemble", (row,))))
        self._new_ensembles.add(name)

    def _ensemble_names(self) -> list[str]:
        return self.sql("SELECT name FROM ensembles ORDER BY name")["name"].tolist()

    def ensemble_spec(self, name: str) -> dict:
        """{"name", "members": [node ids], "rule": {...}, "created_at"} of a recorded ensemble."""
        df = self.sql("SELECT * FROM ensembles WHERE name = ?", [name])
        if df.empty:
            raise FipgraphError(f"no ensemble named {name!r} in {self.root}; recorded: {self._ensemble_names()}")
        spec = df.iloc[0].to_dict()
        spec["members"], spec["rule"] = json.loads(spec["members"]), json.loads(spec["rule"])
        return spec

    def start_run(self, name: str, op: str | None = None, config: Mapping | None = None) -> int:
        """Register a run (its full resolved config is kept as JSON) and return its id."""
        writer = self._writable()
        if name in self._run_names:
            raise FipgraphError(f"a run named {name!r} already exists (run {self._run_names[name]}); "
                                "pick another name or resume it via store.find_run(name)")
        run_id, self._next_run = self._next_run, self._next_run + 1
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        row = (run_id, name, op, to_json(dict(config or {})), "running", now, None)
        writer.put(OpJob(CatalogOp("insert_run", (row,))))
        self._run_names[name] = run_id
        return run_id

    def recorder(self, run: str, config: Mapping | None = None, parent: int | None = None, *,
                 model_kwargs: Mapping | None = None, resume: bool = False, op: str = "record") -> Recorder:
        """Record any training loop as run ``run``: ``with store.recorder(run="x") as rec: rec.save(model, step=s)``
        appends chained nodes; see fipgraph/storage/recorder.py (resume=True continues a run of that name)."""
        return Recorder(self, run, config=config, parent=parent, model_kwargs=model_kwargs, resume=resume, op=op)

    def finish_run(self, run_id: int, status: str = "finished", error: str | None = None) -> None:
        """Mark a run ended; ``error`` (for status 'failed') says why, in ``runs.error``."""
        writer = self._writable()
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        writer.put(OpJob(CatalogOp("finish_run", (int(run_id), status, now, error))))

    def set_run_status(self, run_id: int, status: str) -> None:
        writer = self._writable()
        writer.put(OpJob(CatalogOp("set_run_status", (int(run_id), status))))

    def find_run(self, name: str) -> dict | None:
        """The runs row named ``name`` (config decoded), or None."""
        return self._run_where("name", name)

    def run_by_id(self, run_id: int) -> dict | None:
        """The runs row ``run_id`` (config decoded), or None."""
        return self._run_where("run_id", int(run_id))

    def _run_where(self, column: str, value) -> dict | None:
        self.flush()
        df = self.catalog.query(f"SELECT * FROM runs WHERE {column} = ?", [value])
        if df.empty:
            return None
        run = df.iloc[0].to_dict()
        run["config"] = json.loads(run["config"]) if run["config"] else {}
        return run

    # -- named reads of the run engine (fipgraph.storage.protocol.EngineStore) ---------------------------
    def last_node(self, run_id: int) -> NodeAt | None:
        """The run's node furthest along its walk (the rule: ``fipgraph.storage.sql``), or None."""
        return self._node_at(LAST_NODE_OF_RUN_ID, [int(run_id)])

    def first_tagged(self, run_id: int, tag: str) -> NodeAt | None:
        """The run's first node (by step) whose tags hold ``tag: true``, or None."""
        return self._node_at(FIRST_TAGGED, [int(run_id), tag_path(tag)])

    def _node_at(self, query: str, params: list) -> NodeAt | None:
        df = self.sql(query, params)
        if df.empty:
            return None
        return NodeAt(int(df["node_id"][0]), int(df["step"][0]), decode_tags(df["tags"][0]))

    def node_tags(self, node_id: int) -> dict:
        return decode_tags(self.node(node_id).get("tags"))

    def has_evals(self, node_id: int) -> bool:
        return int(self.sql("SELECT count(*) AS n FROM evals WHERE node_id = ?", [int(node_id)])["n"][0]) > 0

    def flush(self, timeout: float | None = None) -> None:
        """Block until every appended node and evaluation is committed. Raises WriterError if the
        background writer failed (with its cause) or died, or if ``timeout`` seconds pass first."""
        if self._writer is not None:
            self._writer.flush(timeout)

    def close(self) -> None:
        """Commit (and on object storage publish) what is queued, stop the writer and release the lock;
        raises WriterError if the final commit fails (the lock is released either way)."""
        if self._writer is not None:
            end_open_recorders(self, None)  # a run still recording stopped unfinished: 'interrupted', not 'running'
            try:
                self._writer.flush()
                if self.remote:
                    self.catalog.publish_extra()  # the build log's last lines
            finally:
                self._writer.stop()
                self._writer = None
                exit_hook.untrack(self)
        self._release_lock()

    def _release_lock(self) -> None:
        if getattr(self, "weights", None) is not None:
            self.weights.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._writer is not None:
            end_open_recorders(self, exc)  # e.g. trainer.train() raised inside `with open_store(...)`: 'failed'
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, mode={self.mode!r}, nodes={len(self._index)})"

    # -- reading ---------------------------------------------------------------------------------
    def _decode(self, node_id: int) -> dict[str, np.ndarray]:
        """Decoded, verified rows of a node (raises CorruptNodeError if its chain is damaged)."""
        return self._reader.decode(node_id)

    def state_dict(self, node_id: int, params: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The node's tensors, bit-identical to what was appended (unless stored with a lossy encoding).

        ``params``: only these tensors (in this order). A node too large to decode whole within the read
        cache (over a third of ``cache_bytes``) is then streamed chunk by chunk, keeping only the asked-for
        words, so a few layers of a large model are read in bounded memory (still verified in full)."""
        info = self._info(node_id)
        if self._writer is not None and int(node_id) in self._pending:
            self.flush()
        layout = self.layout(info.arch_id)
        if params is None:
            return layout.unpack(self._decode(int(node_id)))
        if isinstance(params, str):
            raise TypeError(f"params must be a list of parameter names, got the string {params!r}; "
                            f"pass [{params!r}]")
        names = list(params)
        layout.locate(names)  # unknown names fail here, naming them
        rows = self._reader.cached(int(node_id))
        row_bytes = sum(g.n_words * np.dtype(g.word).itemsize for g in layout.groups)
        if rows is None and 3 * row_bytes > self._reader.cache_bytes:
            chain = stream.chain_of(self._reader, int(node_id))
            if stream.streamable(chain):
                return stream.read_tensors(self._reader, layout, int(node_id), names)
        if rows is None:
            rows = self._decode(int(node_id))
        return {name: torch.from_numpy(np.array(rows[g.dtype][start:start + n]).view(np.uint8))
                .view(g.torch_dtype).reshape(shape) for name, g, start, n, shape in layout.locate(names)}

    def load_into(self, model: torch.nn.Module, node_id: int) -> torch.nn.Module:
        state = self.state_dict(node_id)
        expected, stored = Layout.of(model.state_dict()), self.layout(self._info(node_id).arch_id)
        if expected.untied() != stored.untied():  # a node stored before ties were recognised loads into a tied model
            expected.check_matches(stored, f"node {node_id}")
        model.load_state_dict(state)
        return model

    def node(self, node_id: int) -> dict:
        self._info(node_id)
        self.flush()
        return self.catalog.query("SELECT * FROM nodes WHERE node_id = ?", [int(node_id)]).iloc[0].to_dict()

    def arch_spec(self, node_id: int) -> dict:
        info = self._info(node_id)
        self.flush()
        return json.loads(self.catalog.query("SELECT spec FROM archs WHERE arch_id = ?", [info.arch_id])["spec"][0])

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run read-only SQL over the catalog (tables nodes, edges, evals, runs, archs, storage; view wide)."""
        self.flush()
        try:
            return self.catalog.query(query, params)
        except Exception as exc:
            import duckdb

            if isinstance(exc, duckdb.Error):
                raise QueryError(str(exc)) from None
            raise

    def graph(self) -> nx.DiGraph:
        """The lineage graph with every nodes column as node attributes, plus ``parents`` (every parent, primary
        first: several for a merge, whose edges carry ``merge_weight``); no weights are read."""
        self.flush()
        nodes = self.catalog.query_arrow("SELECT * FROM nodes ORDER BY node_id")
        edges = self.catalog.query_arrow("SELECT src, dst, distance, output_distance FROM edges")
        # Arrow columns to Python lists: 3x faster than pandas records at 100k nodes (0.35 vs 1.0 s)
        cols = [c for c in nodes.column_names if c != "node_id"]
        values = [nodes.column(c).to_pylist() for c in cols]
        g = nx.DiGraph()
        g.add_nodes_from(zip(nodes.column("node_id").to_pylist(), (dict(zip(cols, row)) for row in zip(*values))))
        g.add_edges_from((s, d, {"distance": x, "output_distance": o})
                         for s, d, x, o in zip(*(edges.column(c).to_pylist() for c in edges.column_names)))
        for n, attrs in g.nodes(data=True):
            attrs["parents"] = [] if attrs.get("parent_id") is None else [attrs["parent_id"]]
        several = self.catalog.query_arrow("SELECT node_id, parent_id, weight FROM node_parents "
                                           "ORDER BY node_id, position").to_pylist()
        for node in {r["node_id"] for r in several}:
            g.nodes[node]["parents"] = []
        for r in several:  # a merge: every parent in order, each edge with the parent's weight in the merge
            g.nodes[r["node_id"]]["parents"].append(r["parent_id"])
            if g.has_edge(r["parent_id"], r["node_id"]):
                g.edges[r["parent_id"], r["node_id"]]["merge_weight"] = r["weight"]
        return g

    def __len__(self) -> int:
        return len(self._index)
