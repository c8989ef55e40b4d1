"""A config from TOML to a checked ``BuildConfig``: file → overrides → sweeps → validation.

The one direction of the config package: ``fields`` ← ``schema`` ← ``overrides`` ← ``sweep`` ← here."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from fipgraph.errors import ConfigError, need
from fipgraph.path.config import sweep
from fipgraph.path.config.overrides import apply_overrides, parse_overrides
from fipgraph.path.config.schema import BuildConfig, build_config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                sweeps: list[str] | None = None) -> BuildConfig:
    """Read a TOML config (None = the embedded default), apply key=value overrides, then expand its
    [sweep] table and the ``sweeps`` ("key=v1,v2") into one run per combination (``fipgraph.path.config.sweep``)."""
    if path is None:
        text = resources.files("fipgraph.path").joinpath("default.toml").read_text()
    else:
        p = Path(path)
        need(p.is_file(), f"config file {str(p)!r} not found; give a TOML path or no argument for the default build")
        text = p.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path or 'default.toml'}: {exc}") from None
    swept = sweep.sweep_keys(raw, sweeps)
    return build_config(sweep.expand(apply_overrides(raw, parse_overrides(overrides or [])), swept))
