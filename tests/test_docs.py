"""README.md and docs/*.md are run, not just read: every ```bash and ```python block, in order, in a fresh folder.

Shell lines that start with `fipgraph` run in-process through the CLI's `main` (as tests/test_build_cli.py does);
lines spelled `python -m fipgraph …` run in bash exactly as written (no speed overrides);
`fipgraph ui` is started as a server, fetched and stopped; other lines run in bash. Set-up lines (pip, apt-get,
.ci/) are the CI's job: `.ci/run` runs exactly the README's test command, which a test here checks. To stay fast,
every `fipgraph build` gets the bare override `steps=20` (every run walks 20 steps) and `--max-steps 60`;
a bare `fipgraph build` (the demo, whose networks the tour selects by accuracy) is built once per session with
100 steps per run and copied. Python blocks of one page share a namespace.
A block that keeps shell state (exports, variables, background jobs) runs as one bash script. Also checked: the tables and columns that docs/storage.md names are exactly those of a new store, relative links
resolve, and every script named in benchmarks/RESULTS.md exists."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fipgraph.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]

BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = [p for p in PAGES if BLOCK.search(p.read_text())]  # pages with a ```bash or ```python block
SETUP = ("pip ", "sudo ", "apt-get ", "bash .ci/", "python -m pytest")
FAST = ["steps=20"]
DEMO = ["steps=100"]  # task 1 reaches > 90 % on digits, so the tour's selections are not empty
WRITTEN_ELSEWHERE = {"docs/own-model.md"}  # the page issue 21 writes; its link may land before the page


def blocks(page: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(page.read_text())


def shell_lines(code: str) -> list[str]:
    """Commands of a bash block: continuation lines joined, a quoted string may span lines (`python -c "..."`),
    comments and blank lines dropped."""
    commands, pending = [], ""
    for line in code.replace("\\\n", " ").splitlines():
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line.strip()
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        commands.append(pending)
        pending = ""
    return commands


def fast_build(argv: list[str], steps: list[str] = FAST) -> list[str]:
    """`build [CONFIG] ...` with the speed overrides put where key=value overrides go (before the options)."""
    i = 2 if len(argv) > 1 and argv[1].endswith(".toml") else 1
    argv = argv[:i] + steps + argv[i:]
    cap = str(3 * int(steps[0].split("=")[1]))
    return argv if "--max-steps" in argv or "--executor" in argv else argv + ["--max-steps", cap]


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "store"
    assert cli_main(fast_build(["build"], DEMO) + ["--store", str(path), "--no-progress"]) in (0, None)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(argv: list[str], cwd: Path) -> None:
    """Start `fipgraph ui` as written (on a free port), wait until the page answers, stop it."""
    port = free_port()
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fipgraph", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("fipgraph ui did not answer within 90 s")
    finally:
        proc.terminate()
        proc.wait(20)


def run_shell_line(line: str, cwd: Path, demo: Path) -> None:
    """One command as written; `a && b` runs its parts in order, set-up parts left to the CI."""
    if " && " in line:
        for part in line.split(" && "):
            run_shell_line(part.strip(), cwd, demo)
        return
    if line.startswith(SETUP):
        return
    argv = shlex.split(line, comments=True)
    if argv[0] != "fipgraph" or any(c in line for c in "|$`;&<>\n"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        return
    argv = argv[1:]
    if argv == ["build"] and not (cwd / "store").exists():
        shutil.copytree(demo, cwd / "store")
        return
    if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            return
    if argv[0] == "ui":
        return serve_once(argv, cwd)
    if argv[0] == "build":
        argv = fast_build(argv) + ["--no-progress"]
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    assert rc in (0, None), f"`{line}` exited {rc}"


def keeps_shell_state(line: str) -> bool:
    """Variables, exports and background jobs live across lines: such a block runs as one script."""
    return line.startswith(("export ", "until ")) or line.rstrip().endswith("&") or "$" in line


def run_shell_script(lines: list[str], cwd: Path) -> None:
    """The block as one bash script, as written (set-up lines left to the CI); background jobs are killed at exit."""
    body = "\n".join(ln for ln in lines if not ln.startswith(SETUP))
    script = f"set -e\ntrap 'kill -9 $(jobs -p) 2>/dev/null || true' EXIT\n{body}\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{body}\n{done.stderr[-3000:]}"


def prepare_folder(tmp: Path) -> None:
    """A fresh folder as a user's clone would have it: examples/ beside, `fipgraph` on PATH."""
    (tmp / "examples").symlink_to(ROOT / "examples")
    (tmp / "bin").mkdir()
    wrapper = tmp / "bin" / "fipgraph"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fipgraph "$@"\n')
    wrapper.chmod(0o755)


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_runs_as_written(page, tmp_path, monkeypatch, demo_store):
    found = blocks(page)
    prepare_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for i, (lang, code) in enumerate(found):
            if lang == "python":
                exec(compile(code, f"{page.name}, block {i + 1}", "exec"), namespace)  # noqa: S102 - the docs' own code
                continue
            lines = shell_lines(code)
            if any(keeps_shell_state(line) for line in lines):
                run_shell_script(lines, tmp_path)
                continue
            for line in lines:
                run_shell_line(line, tmp_path, demo_store)
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # a page's `--executor ray` build: leave no session to later tests
            ray.shutdown()


def test_ci_runs_exactly_the_readme_test_command():
    readme_cmds = [ln for _, code in blocks(ROOT / "README.md") for ln in shell_lines(code) if "pytest" in ln]
    assert len(readme_cmds) == 1, readme_cmds
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in ln]
    assert ci == readme_cmds


def test_readme_python_imports_fipgraph_before_using_it():
    for lang, code in blocks(ROOT / "README.md"):
        if lang == "python" and "fipgraph." in code:
            assert re.search(r"^import (.*\b)?fipgraph\b", code, re.M), code


def documented_tables(page: Path) -> dict[str, list[str]]:
    """The `| table | columns |` rows of a page's table of tables."""
    rows = re.findall(r"^\| `(\w+)` \| (?:view: )?([^|]+) \|", page.read_text(), re.M)
    return {name: [c.strip(" `") for c in cols.split(",")] for name, cols in rows}


def test_storage_page_names_exactly_the_tables_and_columns_of_a_new_store(tmp_path):
    import duckdb

    import fipgraph

    with fipgraph.open_store(tmp_path / "s") as store:
        store.start_run("r", op="finetune")
    con = duckdb.connect(str(tmp_path / "s" / "metrics.duckdb"), read_only=True)
    actual = {t: [c[0] for c in con.execute(f'describe "{t}"').fetchall()]
              for (t,) in con.execute("select table_name from information_schema.tables where table_schema = 'main'").fetchall()}
    documented = documented_tables(ROOT / "docs" / "storage.md")
    wide = documented.pop("wide")
    assert sorted(documented) == sorted(t for t in actual if t != "wide")
    for table, cols in documented.items():
        assert cols == actual[table], f"docs/storage.md: {table}({', '.join(cols)}) vs the store: {actual[table]}"
    assert set(wide) <= set(actual["wide"]) | {"{dataset}_{metric}"}, wide


LINK = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES + [ROOT / "benchmarks" / "RESULTS.md"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        path = (page.parent / target).resolve()
        if path.relative_to(ROOT).as_posix() in WRITTEN_ELSEWHERE:
            continue
        assert path.exists(), f"{page.name} links {target}, which does not exist"


def test_every_script_and_folder_named_in_results_exists():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    named = set(re.findall(r"\b((?:benchmarks|examples)/[\w./-]+\w)", text))
    assert named, "RESULTS.md names its commands"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing
