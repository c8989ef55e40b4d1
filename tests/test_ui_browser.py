"""`fipgraph ui` end to end in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

No skip: without a browser this test fails and says how to install one (`bash .ci/install-browser`).
"""

import csv
import io
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import fipgraph
from fipgraph.cli import main
from fipgraph.query import select
from fipgraph.ui import UiServer

CHROMIUM = "/usr/bin/chromium"
# flags that work on a closed network (no GPU, no sandbox as root, no background fetches)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BUILD = ["runs.task1.steps=100", "runs.continual.steps=100", "runs.finetune.steps=100"]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The demo build with a step cap (31 nodes), and one recorded ensemble."""
    path = tmp_path_factory.mktemp("browser") / "store"
    assert main(["build", "--store", str(path), "--no-progress", *BUILD]) == 0
    with fipgraph.open_store(path, mode="a") as st:
        st.add_ensemble("best3", [28, 29, 30], {"strategy": "top"})
        # a perplexity with its standard error along the continual run, as language-model builds store them
        ids = st.sql("SELECT node_id FROM nodes JOIN runs USING (run_id) WHERE runs.name LIKE '%/continual' ORDER BY node_id")
        st.add_evals_many({int(n): {"wiki": {"perplexity": 50.0 + k, "perplexity_se": 1.23456 + 0.1 * k}}
                           for k, n in enumerate(ids["node_id"])})
    return path


@pytest.fixture(scope="module")
def url(demo_store):
    server = UiServer(demo_store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(server.url + "api/version", timeout=2).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "fipgraph ui did not answer within 30 s"
            time.sleep(0.1)
    yield server.url
    server.stop()
    thread.join(10)


@pytest.fixture(scope="module")
def page(url):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium with `bash .ci/install-browser`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 820}, accept_downloads=True)
        pg.errors = []
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
        pg.goto(url)
        pg.wait_for_function("window.fipgraph && window.fipgraph.ready", timeout=60_000)
        yield pg
        browser.close()


def _count(store) -> int:
    with fipgraph.open_store(store, mode="r") as st:
        return len(st)


def test_page_shows_every_node_of_the_store(page, demo_store, tmp_path):
    n = _count(demo_store)
    assert n == 31
    assert page.get_attribute("#node-count", "data-nodes") == str(n)
    assert page.evaluate("window.fipgraph.graph.drawnCount") == n
    assert page.inner_text("#node-count").startswith(f"{n} nodes · 3 runs")
    assert "continual" in page.inner_text("#legend") and "task1_accuracy" in page.inner_text("#colorbar-box")
    shot = tmp_path / "graph.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    assert page.errors == []


def test_clicking_a_node_shows_its_metrics(page, demo_store):
    # the node farthest from its neighbours on screen, so the click cannot land on another one
    target = page.evaluate("""() => { const g = window.fipgraph.graph, d = g.d; let best = -1, far = -1;
        d.id.forEach((id, i) => { let near = Infinity;
          d.id.forEach((_, j) => { if (j !== i) near = Math.min(near, Math.hypot(g.sx[i] - g.sx[j], g.sy[i] - g.sy[j])); });
          if (near > far) { far = near; best = id; } });
        return best; }""")
    pos = page.evaluate(f"window.fipgraph.graph.screenPos({target})")
    with fipgraph.open_store(demo_store, mode="r") as st:
        row = st.sql("SELECT task1_accuracy, step FROM wide WHERE node_id = ?", [target]).iloc[0]
    exact = float(row["task1_accuracy"])
    shown = f"{float(f'{exact * 100:.4g}'):g} %"  # 4 significant digits of the percentage
    page.mouse.move(pos["x"], pos["y"])
    assert f"node {target}" in page.inner_text("#tooltip") and f"task1_accuracy {shown}" in page.inner_text("#tooltip")
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_selector(f"#node-panel[data-node='{target}']")
    panel = page.inner_text("#node-panel")
    assert f"node {target}" in panel and "task1_accuracy" in panel
    cell = page.locator("table.metrics tr", has_text="task1_accuracy").locator("td.num")
    assert cell.inner_text() == shown and cell.get_attribute("title") == repr(exact)  # exact on hover
    copied = page.evaluate("""() => {  // select the metrics table and copy: the clipboard gets the exact values
        const table = document.querySelector("table.metrics"), range = document.createRange();
        range.selectNodeContents(table);
        getSelection().removeAllRanges(); getSelection().addRange(range);
        const event = new ClipboardEvent("copy", {clipboardData: new DataTransfer(), bubbles: true, cancelable: true});
        table.rows[0].cells[1].dispatchEvent(event);
        return event.clipboardData.getData("text/plain"); }""")
    assert f"task1_accuracy\t{exact!r}" in copied.splitlines()
    assert page.inner_text("#export-command").startswith(f"fipgraph export {target} --store ")
    assert page.locator(".charts canvas").count() >= 2  # the run's metric curves
    assert page.errors == []


def test_metric_values_show_four_significant_digits_and_known_units(page):
    cases = {("task1_accuracy", 0.912345678): "91.23 %", ("interpolate:7/task1_accuracy_barrier", -0.0123456): "-1.235 %",
             ("wiki_perplexity", 123.456789): "123.5 ppl", ("wiki_inverse_perplexity", 0.00812345): "0.008123",
             ("task1_loss", 0.123456789): "0.1235", ("task1_loss", 1234567.89): "1.235e+6", ("n", 3): "3",
             ("task1_accuracy", None): "–"}
    for (name, value), want in cases.items():
        got = page.evaluate("([n, v]) => window.graphUtil.fmtMetric(n, v)", [name, value])
        assert got == want, (name, value, got)


def test_a_metric_with_its_standard_error_is_one_row_and_a_band(page, demo_store):
    with fipgraph.open_store(demo_store, mode="r") as st:
        row = st.sql("SELECT node_id, wiki_perplexity, wiki_perplexity_se FROM wide "
                     "WHERE wiki_perplexity_se IS NOT NULL ORDER BY node_id DESC LIMIT 1").iloc[0]
    node, ppl, se = int(row["node_id"]), float(row["wiki_perplexity"]), float(row["wiki_perplexity_se"])
    page.evaluate(f"window.fipgraph.showNode({node})")
    page.wait_for_selector(f"#node-panel[data-node='{node}']")
    cell = page.locator("table.metrics tr", has_text="wiki_perplexity").locator("td.num")
    assert cell.count() == 1  # the _se value is not a row of its own
    assert cell.inner_text() == f"{float(f'{ppl:.4g}'):g} ± {float(f'{se:.4g}'):g} ppl"
    js = lambda x: str(int(x)) if x.is_integer() else repr(x)  # noqa: E731  JavaScript's String(number)
    assert cell.get_attribute("title") == f"{js(ppl)} ± {js(se)}"
    assert page.evaluate("([n, v, e]) => window.graphUtil.fmtMetricSe(n, v, e)",
                         ["task1_accuracy", 0.912345, 0.0123456]) == "91.23 ± 1.235 %"
    assert page.locator(".charts canvas").count() >= 2 and page.errors == []


def test_sql_console_shows_rows_errors_and_downloads_csv(page, demo_store):
    page.click("#tabs button[data-tab='sql']")
    page.fill("#sql-input", "SELECT node_id, step FROM nodes WHERE run_id = 0 ORDER BY node_id")
    page.click("#sql-run")
    page.wait_for_selector("#sql-result tbody tr")
    cells = [r.split("\t") for r in page.inner_text("#sql-result tbody").strip().splitlines()]
    with fipgraph.open_store(demo_store, mode="r") as st:
        want = st.sql("SELECT node_id, step FROM nodes WHERE run_id = 0 ORDER BY node_id")
    assert cells == [[str(a), str(b)] for a, b in zip(want["node_id"], want["step"])] and len(cells) == 11
    assert page.inner_text("#sql-info").startswith("11 rows")
    with page.expect_download() as download:
        page.click("#sql-csv")
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0] == ["node_id", "step"] and len(rows) == 12
    for bad, words in [("SELEC 1", "Parser Error"), ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error")]:
        page.fill("#sql-input", bad)
        page.click("#sql-run")
        page.wait_for_selector("#sql-error:not([hidden])")
        assert words in page.inner_text("#sql-error")
    assert page.errors == []


def test_select_and_ensembles_highlight_nodes(page, demo_store):
    page.click("#tabs button[data-tab='select']")
    page.click("#add-constraint")
    page.fill(".constraint input", "0.95")
    page.click("#run-select")
    with fipgraph.open_store(demo_store, mode="r") as st:
        want = select(st, where={"task1_accuracy": (">=", 0.95)})
    page.wait_for_selector("#highlight-info button")
    assert page.inner_text("#highlight-info").startswith(f"{len(want)} highlighted: selection")
    assert 0 < len(want) < 31
    page.click("#tabs button[data-tab='ensembles']")
    page.wait_for_selector(".ensemble")
    page.click(".ensemble b")
    assert page.inner_text("#highlight-info").startswith("3 highlighted: ensemble best3")
    assert page.errors == []


def test_new_nodes_appear_without_a_reload(page, demo_store):
    n = _count(demo_store)
    with fipgraph.open_store(demo_store, mode="a") as st:
        parent = n - 1
        for step in range(2):
            parent = st.append(st.state_dict(parent), parent=parent, step=1000 + step)
    page.wait_for_function(f"document.getElementById('node-count').dataset.nodes === '{n + 2}'", timeout=15_000)
    assert page.evaluate("window.fipgraph.graph.drawnCount") == n + 2
    assert page.errors == []
