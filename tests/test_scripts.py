"""Every script in benchmarks/ and examples/ answers --help from a fresh clone, reads no machine paths, and every
paper experiment folder has what its README promises (config, reproduce.sh, figures)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fipgraph.path.config.loading import load_config

ROOT = Path(__file__).resolve().parents[1]
PY_SCRIPTS = sorted(p for d in ("benchmarks", "examples") for p in (ROOT / d).rglob("*.py"))
SH_SCRIPTS = sorted(p for d in ("benchmarks", "examples") for p in (ROOT / d).rglob("*.sh"))
CONFIGS = sorted((ROOT / "examples").rglob("*.toml"))
EXPERIMENTS = sorted(p for p in (ROOT / "examples" / "paper").iterdir() if p.is_dir() and not p.name.startswith("_"))
MODULES = {"seeds.py"}  # helpers imported by the scripts, not scripts themselves
MACHINE_PATH = re.compile(r"(?<![\w.])/(tmp|work|home|root|scratch)/")

# One interpreter runs every script's --help (torch and matplotlib are imported once, and the scripts' module-level
# settings stay out of the test session). A script with an argument parser passes when it exits 0 after printing
# its usage; a script without one is imported only (its work must sit under `if __name__ == "__main__":`).
DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    buf = io.StringIO()
    has_cli = "argparse" in open(path).read()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__" if has_cli else "__imported__")
        out[path] = "ok" if not has_cli else "finished without exiting: --help did not stop it"
    except SystemExit as exc:
        out[path] = "ok" if exc.code in (0, None) and "usage" in buf.getvalue() else f"exit {exc.code}: {buf.getvalue()[-300:]}"
    except Exception as exc:  # noqa: BLE001 - reported per script
        out[path] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_every_python_script_answers_help():
    scripts = [str(p) for p in PY_SCRIPTS if p.name not in MODULES]
    assert len(scripts) >= 20, scripts
    done = subprocess.run([sys.executable, "-c", DRIVER, *scripts], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {Path(k).relative_to(ROOT).as_posix(): v for k, v in results.items() if v != "ok"}
    assert not failed, failed


@pytest.mark.parametrize("script", SH_SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shell_script_parses_and_answers_help(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


@pytest.mark.parametrize("path", PY_SCRIPTS + SH_SCRIPTS + CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_paths(path):
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_config_loads(config):
    assert load_config(config).runs


@pytest.mark.parametrize("folder", EXPERIMENTS, ids=lambda p: p.name)
def test_paper_experiment_folder_is_complete(folder):
    readme = (folder / "README.md").read_text()
    assert (folder / "config.toml").is_file() and (folder / "reproduce.sh").is_file()
    rel = folder.relative_to(ROOT).as_posix()
    assert f"bash {rel}/reproduce.sh" in readme, "the README gives the one command that reproduces it"
    assert "pip install" in readme, "the README says how to install from a fresh clone"
    assert "| paper" in readme or "paper (" in readme, "the README has a paper-vs-ours table"
    for figure in re.findall(r"`?([\w.-]+\.png)`?", readme):
        assert (folder / figure).is_file(), f"{rel}/README.md names {figure}, which is not there"
    for name in re.findall(r"`([\w-]+\.(?:py|sh|toml))`", readme):
        assert (folder / name).is_file(), f"{rel}/README.md names {name}, which is not there"


def test_benchmarks_hold_only_benchmarks():
    """benchmarks/: bench_*.py writing to benchmarks/results/, probes in tools/, the results page."""
    top = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file())
    assert all(n.startswith("bench_") and n.endswith(".py") or n == "RESULTS.md" for n in top), top
    for script in (ROOT / "benchmarks").glob("bench_*.py"):
        assert "results" in script.read_text(), f"{script.name} does not write to benchmarks/results/"
