"""What a build asks for: the TOML schema (``schema``), field type checks (``fields``), command-line
overrides (``overrides``), sweeps (``sweep``) and reading a file (``loading``), imported in that one direction."""

from fipgraph.path.config.loading import load_config
from fipgraph.path.config.overrides import apply_overrides, parse_overrides
from fipgraph.path.config.schema import BuildConfig, DataConfig, RunConfig, build_config, config_to_dict

__all__ = ["BuildConfig", "DataConfig", "RunConfig", "apply_overrides", "build_config", "config_to_dict", "load_config",
           "parse_overrides"]
