// The page: loads the graph, polls for a build's new nodes, and wires the node, SQL, select and ensembles tabs.
(() => {
"use strict";

const POLL_MS = 2000;  // "within a few seconds" while a build writes; one stat() per poll on the server
const $ = id => document.getElementById(id);
const {fmt, fmtMetric, fmtMetricSe, GLYPHS, SHAPES, viridis} = window.graphUtil;
const state = {meta: null, graph: null, version: null, loading: false, node: null, sqlIds: null};
const timings = {};
window.fipgraph = {ready: false, timings, state};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || (data.detail && JSON.stringify(data.detail)) || res.statusText);
  return data;
}

const view = new GraphView($("graph"), $("tooltip"));
window.fipgraph.graph = view;
window.fipgraph.showNode = id => showNode(id);  // for deep links and tests
view.onSelect = id => showNode(id);
view.describe = i => {
  const d = view.d, c = d.color;
  const value = c ? `<br>${escapeHtml(c.name)} <b>${escapeHtml(fmtMetric(c.name, c.values[i]))}</b>` : "";
  return `node <b>${d.id[i]}</b> · ${escapeHtml(d.ops[d.op[i]])}<br>run ${escapeHtml(d.runs[d.run[i]])} · step ${fmt(d.step[i])}${value}`;
};

function escapeHtml(s) { return String(s).replace(/[&<>"']/g, ch => `&#${ch.charCodeAt(0)};`); }

// ---------------------------------------------------------------- graph
async function loadMeta() {
  const first = state.meta === null;
  state.meta = await api("/api/meta");
  $("store-path").textContent = state.meta.store;
  const color = $("color"), previous = color.value || state.meta.default_color;
  color.replaceChildren(el("option", {value: ""}, "(none)"), ...state.meta.metrics.map(m => el("option", {value: m}, m)));
  color.value = state.meta.metrics.includes(previous) ? previous : "";
  for (const id of ["order-by", "maximize", "minimize"]) {
    const s = $(id), keep = new Set([...s.selectedOptions].map(o => o.value));
    s.replaceChildren(...state.meta.metrics.map(m => el("option", {value: m}, m)));
    for (const o of s.options) o.selected = keep.has(o.value);
  }
  if (first && state.meta.default_color) $("order-by").value = state.meta.default_color;
  if (!$("sql-input").value) {
    const m = state.meta.default_color ? `, ${state.meta.default_color}` : "";
    $("sql-input").value = `SELECT node_id, run_id, op, step${m}\nFROM wide\nORDER BY node_id\nLIMIT 20`;
  }
}

async function loadGraph() {
  state.loading = true;
  try {
    const t0 = performance.now();
    const params = new URLSearchParams({layout: $("layout").value});
    if ($("color").value) params.set("color", $("color").value);
    const res = await fetch(`/api/graph?${params}`);
    const text = await res.text();
    const t1 = performance.now();
    const g = JSON.parse(text);
    if (!res.ok) throw new Error(g.error);
    const t2 = performance.now();
    state.graph = g; state.version = g.version;
    view.setData(g);
    if (state.highlightIds) view.setHighlight(state.highlightIds);
    if (state.node !== null) view.setSelected(state.node);
    view.draw();
    const t3 = performance.now();
    Object.assign(timings, {fetch_ms: t1 - t0, parse_ms: t2 - t1, draw_ms: t3 - t2, bytes: text.length});
    renderLegend(g); renderStatus(g);
  } finally {
    state.loading = false;
  }
}

function renderStatus(g) {
  const sampled = g.n_drawn < g.n_nodes ? ` (${g.n_drawn.toLocaleString()} drawn, evenly sampled)` : "";
  $("node-count").textContent = `${g.n_nodes.toLocaleString()} nodes${sampled} · ${g.runs.length} runs · ` +
    `updated ${new Date().toLocaleTimeString()}`;
  $("node-count").dataset.nodes = g.n_nodes;
  $("layout-note").textContent = g.layout_note || "";
}

function renderLegend(g) {
  const counts = new Array(g.ops.length).fill(0);
  for (const o of g.op) counts[o]++;
  $("legend").replaceChildren(...g.ops.map((op, k) => el("div", {},
    el("span", {class: "glyph"}, GLYPHS[SHAPES[k % SHAPES.length]]), ` ${op} `, el("span", {class: "muted"}, `(${counts[k].toLocaleString()})`))));
  const box = $("colorbar-box"), range = view.colorRange;
  box.hidden = !g.color;
  if (!g.color) return;
  const cb = $("colorbar"), ctx = cb.getContext("2d");
  for (let x = 0; x < cb.width; x++) { ctx.fillStyle = viridis(x / (cb.width - 1)); ctx.fillRect(x, 0, 1, cb.height); }
  $("colorbar-labels").replaceChildren(el("span", {}, range ? fmtMetric(g.color.name, range[0]) : "–"),
    el("span", {class: "name"}, g.color.name), el("span", {}, range ? fmtMetric(g.color.name, range[1]) : "–"));
}

function setHighlight(ids, label) {
  state.highlightIds = ids;
  view.setHighlight(ids);
  $("highlight-info").replaceChildren(...(ids ? [`${ids.length.toLocaleString()} highlighted: ${label} `,
    el("button", {onclick: () => setHighlight(null)}, "clear")] : []));
}

async function poll() {
  if (state.loading || document.hidden) return;
  try {
    const {version} = await api("/api/version");
    $("live-dot").classList.toggle("on", version !== state.version);
    if (version === state.version) return;
    await loadMeta();
    await loadGraph();
    if (state.node !== null && $("tab-node").classList.contains("active")) showNode(state.node, false);
  } catch (err) {
    $("layout-note").textContent = `cannot reach the server: ${err.message}`;
  }
}

// ---------------------------------------------------------------- node panel
function kvTable(obj) {
  return el("table", {class: "kv"}, Object.entries(obj).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {class: typeof v === "number" ? "num" : ""}, String(v ?? "–")))));
}

// Metrics at 4 significant digits with their units; the exact value is the cell's title (shown on hover)
// and what a copy of the table's rows puts on the clipboard.
// A metric stored with its standard error (name_se beside name, e.g. task1_perplexity_se) is one row,
// "value ± se"; the title keeps both exact values.
function metricsTable(obj) {
  const rows = Object.entries(obj).filter(([k]) => !(k.endsWith("_se") && k.slice(0, -3) in obj));
  return el("table", {class: "kv metrics", oncopy: copyExactRows}, rows.map(([k, v]) => {
    const se = obj[`${k}_se`];
    const shown = typeof se === "number" ? fmtMetricSe(k, v, se) : fmtMetric(k, v);
    const exact = typeof se === "number" ? `${v} ± ${se}` : String(v ?? "");
    return el("tr", {}, el("td", {}, k), el("td", {class: "num", title: exact}, shown));
  }));
}

function copyExactRows(event) {
  const sel = window.getSelection(), rows = [...event.currentTarget.rows].filter(tr => sel.containsNode(tr, true));
  if (!rows.length || !event.clipboardData) return;
  event.clipboardData.setData("text/plain", rows.map(tr => `${tr.cells[0].textContent}\t${tr.cells[1].title}`).join("\n"));
  event.preventDefault();
}

function nodeLink(id) { return el("span", {class: "chip", onclick: () => showNode(id)}, id); }

async function showNode(id, switchTab = true) {
  state.node = id;
  view.setSelected(id);
  if (switchTab) activateTab("node");
  let d;
  try { d = await api(`/api/node/${id}`); } catch (err) {
    $("node-panel").replaceChildren(el("pre", {class: "error"}, err.message)); $("node-panel").hidden = false; return;
  }
  const copy = el("button", {onclick: () => navigator.clipboard && navigator.clipboard.writeText(d.export_command)}, "copy");
  const charts = el("div", {class: "charts"});
  const panel = $("node-panel");
  panel.replaceChildren(
    el("h2", {}, `node ${d.node.node_id}`),
    el("div", {class: "muted"}, `${d.run ? d.run.name : "(no run)"} · ${d.node.op ?? "–"} · step ${d.node.step ?? "–"}`),
    el("h3", {}, "Export"), el("div", {class: "cmd"}, el("code", {id: "export-command"}, d.export_command), copy),
    el("h3", {}, "Metrics"), Object.keys(d.metrics).length ? metricsTable(d.metrics) : el("p", {class: "muted"}, "no evaluations recorded"),
    el("h3", {}, "Lineage"),
    d.parents.length > 1
      ? el("div", {id: "node-parents"}, `parents (${d.parents.length}, a merge) `,
           d.parents.map(p => el("span", {}, nodeLink(p.id), p.weight !== null ? ` ×${fmt(p.weight)} ` : " ")))
      : el("div", {}, "parent ", d.parent !== null ? nodeLink(d.parent) : el("span", {class: "muted"}, "none (a root)")),
    el("div", {}, `children (${d.children.length}) `, d.children.slice(0, 50).map(nodeLink), d.children.length > 50 ? " …" : ""),
    el("h3", {}, "Run curves"), d.curves ? charts : el("p", {class: "muted"}, "no metrics along this run"),
    el("h3", {}, "Tags"), d.tags ? el("pre", {class: "small"}, JSON.stringify(d.tags, null, 2)) : el("p", {class: "muted"}, "none"),
    el("h3", {}, "Properties"), kvTable(d.node));
  panel.hidden = false; $("node-empty").hidden = true;
  panel.dataset.node = d.node.node_id;
  if (d.curves) {
    // accuracies first, then losses, then the rest; a metric that never changes along the run gets no chart
    const rank = m => (m.endsWith("accuracy") ? 0 : m.endsWith("loss") ? 1 : 2);
    const varies = m => new Set(d.curves.series[m].filter(v => v !== null)).size > 1;
    // a standard error (name_se) is drawn as the ±1 SE band of its metric's chart, not as a chart of its own
    const isSe = m => m.endsWith("_se") && m.slice(0, -3) in d.curves.series;
    const names = Object.keys(d.curves.series).filter(m => varies(m) && !isSe(m))
      .sort((a, b) => rank(a) - rank(b)).slice(0, 8);
    for (const m of names) {
      const c = el("canvas"); charts.append(c);
      const se = d.curves.series[`${m}_se`];
      lineChart(c, d.curves.x, d.curves.series[m], {title: se ? `${m} (± 1 SE)` : m, se,
                                                    markX: d.curves.node_x, xName: d.curves.x_name});
    }
  }
}

// ---------------------------------------------------------------- SQL console
function resultTable(r) {
  return el("table", {}, el("thead", {}, el("tr", {}, r.columns.map((c, k) => el("th", {}, c, el("span", {class: "type"}, r.types[k]))))),
    el("tbody", {}, r.rows.map(row => el("tr", {}, row.map(v => el("td", {class: typeof v === "number" ? "num" : ""},
      v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v)))))));
}

async function runSql() {
  const sql = $("sql-input").value;
  $("sql-csv").href = `/api/sql.csv?${new URLSearchParams({sql})}`;
  $("sql-error").hidden = true; $("sql-info").textContent = "running…";
  try {
    const r = await api("/api/sql", {sql});
    $("sql-result").replaceChildren(resultTable(r));
    $("sql-info").textContent = `${r.n_rows.toLocaleString()} row${r.n_rows === 1 ? "" : "s"}` +
      (r.truncated ? ` (first ${r.rows.length.toLocaleString()} shown; the CSV has all)` : "") + ` · ${(r.seconds * 1000).toFixed(0)} ms`;
    const k = r.columns.indexOf("node_id");
    state.sqlIds = k >= 0 ? r.rows.map(row => row[k]).filter(v => typeof v === "number") : null;
    $("sql-highlight").disabled = !state.sqlIds || !state.sqlIds.length;
  } catch (err) {
    $("sql-result").replaceChildren(); $("sql-info").textContent = "";
    $("sql-error").textContent = err.message; $("sql-error").hidden = false;
  }
}

// ---------------------------------------------------------------- select / pareto
function addConstraint() {
  const column = el("select", {}, state.meta.metrics.map(m => el("option", {value: m}, m)));
  if (state.meta.default_color) column.value = state.meta.default_color;
  const op = el("select", {}, [">=", ">", "<=", "<", "==", "!="].map(o => el("option", {value: o}, o)));
  const value = el("input", {type: "number", step: "any", value: "0.9"});
  const row = el("div", {class: "constraint"}, column, op, value, el("button", {onclick: () => row.remove()}, "×"));
  $("constraints").append(row);
}

function constraints() {
  return [...$("constraints").children].map(row => {
    const [column, op, value] = row.querySelectorAll("select, input");
    return {column: column.value, op: op.value, value: value.value === "" ? null : Number(value.value)};
  });
}

async function runSelection(kind) {
  $("select-error").hidden = true;
  const body = {where: constraints(), condition: $("condition").value || null};
  if (kind === "select") {
    body.order_by = $("order-by").value ? ($("order-desc").checked ? "-" : "") + $("order-by").value : null;
    body.limit = $("limit").value === "" ? null : Number($("limit").value);
  } else {
    body.maximize = [...$("maximize").selectedOptions].map(o => o.value);
    body.minimize = [...$("minimize").selectedOptions].map(o => o.value);
  }
  try {
    const r = await api(`/api/${kind}`, body);
    setHighlight(r.ids, kind === "select" ? "selection" : "Pareto front");
    $("select-result").replaceChildren(el("h3", {}, `${r.n.toLocaleString()} node${r.n === 1 ? "" : "s"} ${kind === "select" ? "match" : "on the front"}`),
      el("div", {id: "select-ids"}, r.ids.slice(0, 300).map(nodeLink), r.n > 300 ? " …" : ""));
  } catch (err) {
    $("select-error").textContent = err.message; $("select-error").hidden = false;
  }
}

// ---------------------------------------------------------------- ensembles
async function loadEnsembles() {
  const list = await api("/api/ensembles");
  if (!list.length) {
    $("ensembles").replaceChildren(el("p", {class: "muted"}, "No ensembles recorded. Make one with ",
      el("code", {}, "fipgraph ensemble -k 5 --name best5"), " or fipgraph.query.ensemble(...)."));
    return;
  }
  $("ensembles").replaceChildren(...list.map(e => {
    const card = el("div", {class: "ensemble"}, el("b", {}, e.name), ` · ${e.members.length} members`,
      el("div", {}, e.members.slice(0, 100).map(nodeLink)), el("pre", {}, JSON.stringify(e.rule)));
    card.addEventListener("click", ev => {
      if (ev.target.classList.contains("chip")) return;
      document.querySelectorAll(".ensemble").forEach(c => c.classList.remove("active")); card.classList.add("active");
      setHighlight(e.members, `ensemble ${e.name}`);
    });
    return card;
  }));
}

// ---------------------------------------------------------------- wiring
function activateTab(name) {
  document.querySelectorAll("#tabs button").forEach(b => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t.id === `tab-${name}`));
  if (name === "ensembles") loadEnsembles();
}

document.querySelectorAll("#tabs button").forEach(b => b.addEventListener("click", () => activateTab(b.dataset.tab)));
$("layout").addEventListener("change", loadGraph);
$("color").addEventListener("change", loadGraph);
$("size").addEventListener("input", e => { view.radius = Number(e.target.value); view.request(); });
$("edges").addEventListener("change", e => { view.showEdges = e.target.checked; view.request(); });
$("fit").addEventListener("click", () => { view.userMoved = false; view.fit(true); });
$("sql-run").addEventListener("click", runSql);
$("sql-input").addEventListener("keydown", e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql(); } });
$("sql-input").addEventListener("input", () => { $("sql-csv").href = `/api/sql.csv?${new URLSearchParams({sql: $("sql-input").value})}`; });
$("sql-highlight").addEventListener("click", () => setHighlight(state.sqlIds, "SQL result"));
$("add-constraint").addEventListener("click", addConstraint);
$("run-select").addEventListener("click", () => runSelection("select"));
$("run-pareto").addEventListener("click", () => runSelection("pareto"));

(async function start() {
  try {
    await loadMeta();
    const n = state.meta.n_nodes;
    view.radius = n > 20000 ? 1.5 : n > 2000 ? 2.5 : 4.5;
    $("size").value = view.radius;
    $("sql-csv").href = `/api/sql.csv?${new URLSearchParams({sql: $("sql-input").value})}`;
    await loadGraph();
    timings.total_ms = performance.now();  // since navigation start
    window.fipgraph.ready = true;
    document.body.dataset.ready = "1";
  } catch (err) {
    $("layout-note").textContent = `could not load the store: ${err.message}`;
  }
  setInterval(poll, POLL_MS);
})();
})();
