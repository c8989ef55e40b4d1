"""Sweeps: ``--sweep seed=0,1,2 --sweep runs.sparsify.lam=0.1,1`` (or a ``[sweep]`` table) → one run
per combination of values, named after them.

A run is copied once per distinct combination of the sweep keys that reach it: its own settings
(``seed`` and other bare run keys reach every run, an op's option every run of that op,
``runs.NAME.key`` run NAME) and those of the run it starts ``from``. A copy is named
``NAME[key=value,...]`` (the last part of each key), and a copy's ``from`` names the copy of its
start run with the same values, so a sweep over a later run's setting shares one earlier run.
"""

from __future__ import annotations

import copy
import itertools
import json
import tomllib
from typing import Any

from fipgraph.errors import ConfigError
from fipgraph.path.config.overrides import apply_overrides
from fipgraph.path.config.schema import shared_keys


def parse_sweep(pair: str) -> tuple[str, list]:
    """``key=v1,v2,...`` → (key, [values]); values are TOML literals (lists may hold commas)."""
    key, sep, raw = pair.partition("=")
    key = key.strip()
    if not (sep and key and raw.strip()):
        raise ConfigError(f"--sweep {pair!r}: give key=value1,value2,..., e.g. --sweep seed=0,1,2")
    parts, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{" and 1 or 0
        depth -= ch in "]}" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    values = []
    for part in (p.strip() for p in parts):
        if not part:
            raise ConfigError(f"--sweep {pair!r}: an empty value; separate values with single commas")
        try:
            values.append(tomllib.loads(f"v = {part}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(part)
    return key, values


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def sweep_keys(raw: dict, pairs: list[str] | None) -> dict[str, list]:
    """The [sweep] table (popped from ``raw``) with the --sweep pairs on top of it."""
    table = raw.pop("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[sweep] must be a table of key = [values], got {table!r}")
    sweep = _flatten(table)
    for key, values in sweep.items():
        if not isinstance(values, list):
            raise ConfigError(f"[sweep] {key} = {values!r}: give a list of values, e.g. {key} = [0, 1, 2]")
    sweep.update(parse_sweep(p) for p in pairs or [])
    for key, values in sweep.items():
        if not values:
            raise ConfigError(f"sweep {key}: no values; give at least one")
        labels = [_value_label(v) for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"sweep {key}={values}: a value is given twice; each combination names a run")
    return sweep


def _value_label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _toml_key(key: str) -> str:
    """lam (RunConfig's name, as in runs.sparsify.lam) is spelt lambda in TOML."""
    head, _, last = key.rpartition(".")
    return f"{head}.lambda" if head and last == "lam" else ("lambda" if key == "lam" else key)


def _reaches(key: str, run: dict, default_op: str | None) -> bool:
    """Does sweep key ``key`` change run ``run`` directly?"""
    from fipgraph.path.ops import all_option_names, option_names

    key = _toml_key(key)
    if key.startswith("runs."):
        target = key.split(".")[1]
        return target == run.get("name")
    if "." in key or key not in shared_keys() | all_option_names() or key == "name":
        raise ConfigError(f"sweep {key}: only run settings can be swept (seed, lr, an op's option, or "
                          f"runs.NAME.key); {key!r} is build-wide, so run one build per value instead")
    op = run.get("op", default_op)
    return key in shared_keys() or key in option_names(op)


def expand(raw: dict, sweep: dict[str, list]) -> dict:
    """``raw`` (TOML layout) with each run copied per combination of the sweep values that reach it."""
    if not sweep:
        return raw

    runs, default_op = raw.get("runs", []), raw.get("defaults", {}).get("op")
    reach: dict[str, list[str]] = {}
    own: dict[str, set[str]] = {}
    for run in runs:
        own[run.get("name")] = {k for k in sweep if _reaches(k, run, default_op)}
        parent = reach.get(run.get("from")) if isinstance(run.get("from"), str) else None
        reach[run.get("name")] = [k for k in sweep if k in own[run.get("name")] or k in (parent or [])]
    for key in sweep:
        if not any(key in keys for keys in reach.values()):
            raise ConfigError(f"sweep {key}: no run has this setting (runs: {list(reach)}); "
                              "use runs.NAME.key with one of these names, or a setting of one of their ops")
    short = _short_names(list(sweep))
    out_runs = []
    for run in runs:
        keys, seen = reach[run["name"]], set()
        for combo in itertools.product(*(sweep[k] for k in keys)):
            values = dict(zip(keys, combo))
            label = _label(run["name"], values, short)
            if label in seen:
                continue
            seen.add(label)
            # a key inherited from the start run only names this copy: its op may not have that setting
            applied = {_toml_key(k): v for k, v in values.items() if k in own[run["name"]]}
            swept = apply_overrides({**raw, "runs": [copy.deepcopy(run)]}, applied)["runs"][0]
            swept["name"] = label
            start = run.get("from")
            if isinstance(start, str):
                swept["from"] = _label(start, {k: v for k, v in values.items() if k in reach[start]}, short)
            out_runs.append(swept)
    return {**raw, "runs": out_runs}


def _short_names(keys: list[str]) -> dict[str, str]:
    """The last part of each key (lam for runs.sparsify.lam), the whole key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _label(name: str, values: dict[str, Any], short: dict[str, str]) -> str:
    if not values:
        return name
    return f"{name}[" + ",".join(f"{short[k]}={_value_label(v)}" for k, v in values.items()) + "]"
