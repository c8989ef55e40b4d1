"""Command-line overrides of a config (``key=value``): parsed as TOML literals, applied to the raw tables.

A bare run setting (``lr=0.01``) applies to every run, an op's own setting to every run of that op,
and a dotted key (``runs.task1.steps=50``) to one place."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

from fipgraph.errors import ConfigError, need
from fipgraph.path.config.schema import shared_keys


def _set(tree: dict, dotted: str, value: Any) -> dict:
    """Set ``tree[a][b]... = value`` for "a.b...."; inside [[runs]] a key is a run name or an index."""
    keys = dotted.split(".")
    node: Any = tree
    for k in keys[:-1]:
        if isinstance(node, list):
            match = [r for r in node if isinstance(r, dict) and r.get("name") == k]
            if not match and k.isdigit() and int(k) < len(node):
                match = [node[int(k)]]
            need(bool(match), f"override {dotted!r}: no run {k!r}; use runs.<name or index>.<key>, "
                               f"names: {[r.get('name') for r in node if isinstance(r, dict)]}")
            node = match[0]
        elif isinstance(node, dict):
            node = node.setdefault(k, {})
        else:
            raise ConfigError(f"override {dotted!r}: {k!r} is inside a plain value, not a table")
    need(isinstance(node, dict), f"override {dotted!r}: {keys[-2] if len(keys) > 1 else dotted!r} is not a table")
    node[keys[-1]] = value
    return node


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """key=value strings; values are TOML literals (1e-3, true, [1, 2]) or else plain strings."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        need(bool(sep and key), f"override {pair!r} is not key=value; e.g. lr=0.01 or runs.task1.steps=50")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out



def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A bare run setting (lr=0.01) applies to every run (an op's own setting: to every run of that op);
    dotted keys address one place."""
    from fipgraph.path.ops import OBJECTIVES, all_option_names, option_names

    raw = copy.deepcopy(raw)
    default_op = raw.get("defaults", {}).get("op")
    for key, value in overrides.items():
        if "." not in key and key in shared_keys() and key != "name":
            for run in raw.get("runs", []):
                _set_length(run, key, value, overrides)
        elif "." not in key and key in all_option_names():
            runs = [r for r in raw.get("runs", []) if r.get("op", default_op) in OBJECTIVES
                    and key in option_names(r.get("op", default_op))]
            owners = sorted(op for op in OBJECTIVES if key in option_names(op))
            need(bool(runs), f"override {key}={value!r}: no run has an op with that setting (it belongs to {owners})")
            for run in runs:
                run[key] = value
        elif key.startswith("runs.") and key.rsplit(".", 1)[-1] in _LENGTH:
            prefix, last = key.rsplit(".", 1)
            _set_length(_set(raw, key, value), last, value, overrides, prefix + ".")
        else:
            _set(raw, key, value)
    return raw


_LENGTH = {"steps": "epochs", "epochs": "steps"}  # a run's length: exactly one of the two


def _set_length(run: dict, key: str, value: Any, overrides: dict, prefix: str = "") -> None:
    """Set one run key; an overridden steps (epochs) replaces the run's epochs (steps) unless both are overridden."""
    run[key] = value
    other = _LENGTH.get(key)
    if other and other not in overrides and prefix + other not in overrides:
        run.pop(other, None)
