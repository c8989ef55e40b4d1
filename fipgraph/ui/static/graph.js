// The graph view: every node on one 2-D canvas (no WebGL, so it also works in headless and
// remote browsers), paths as lines, colour by a metric, shape by op. 100k nodes draw in ~0.1 s:
// nodes are stamped into the pixels (raster.js) in colour order, and hover uses a screen-space grid.
(() => {
"use strict";

const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
  "#7ad151", "#bddf26", "#fde725"];
const N_BINS = 64;            // colour levels: enough for the eye; the draw order sorts by them
const NULL_COLOR = "#b8bec9"; // nodes without a value for the colour metric
const SHAPES = ["circle", "square", "triangle", "diamond", "cross"];
const GLYPHS = {circle: "●", square: "■", triangle: "▲", diamond: "◆", cross: "✚"};
const HOVER_PX = 8;           // how close the pointer must be to a node

function hexToRgb(h) { return [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)); }

function viridis(t) {
  const f = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(f), VIRIDIS.length - 2);
  const a = hexToRgb(VIRIDIS[i]), b = hexToRgb(VIRIDIS[i + 1]), u = f - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * u)).join(",")})`;
}
const PALETTE = Array.from({length: N_BINS}, (_, i) => viridis(i / (N_BINS - 1)));
const PALETTE_RGB = PALETTE.map(c => c.slice(4, -1).split(",").map(Number));
const NULL_RGB = hexToRgb(NULL_COLOR), FADED_RGB = [150, 158, 172], RING_RGB = [232, 89, 12], EDGE_RGB = [110, 120, 140];
const VECTOR_EDGES_MAX = 5000;  // beyond, paths are drawn pixel by pixel (raster.js): stroke() slows with overlap

function niceTicks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(3) : Number(v.toPrecision(4)).toString();
}

// A metric's unit where its name tells it: accuracies (and their barriers) are fractions shown as %, a
// perplexity is a perplexity (not its inverse). Unknown names get none rather than a guess.
function metricUnit(name) {
  const n = String(name).toLowerCase();
  if (/perplexity/.test(n) && !/inverse/.test(n)) return "ppl";
  return /(^|[_/:])(accuracy|acc)([_/:]|$)/.test(n) ? "%" : "";
}

// a metric value for the screen: 4 significant digits (fmt) and its unit; the exact value is String(v)
function fmtMetric(name, v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return fmt(v);
  const unit = metricUnit(name);
  return unit === "%" ? `${fmt(v * 100)} %` : unit ? `${fmt(v)} ${unit}` : fmt(v);
}

// a metric with its standard error: "55.74 ± 1.21 ppl" (both at 4 significant digits, one unit)
function fmtMetricSe(name, v, se) {
  if (typeof v !== "number" || !Number.isFinite(v)) return fmt(v);
  const unit = metricUnit(name), scale = unit === "%" ? 100 : 1;
  return `${fmt(v * scale)} ± ${fmt(se * scale)}${unit === "%" ? " %" : unit ? ` ${unit}` : ""}`;
}

function shapePath(ctx, shape, x, y, r) {
  switch (shape) {
    case "square": ctx.rect(x - r * 0.85, y - r * 0.85, r * 1.7, r * 1.7); break;
    case "triangle": ctx.moveTo(x, y - r * 1.1); ctx.lineTo(x + r, y + r * 0.75); ctx.lineTo(x - r, y + r * 0.75); ctx.closePath(); break;
    case "diamond": ctx.moveTo(x, y - r * 1.2); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r * 1.2); ctx.lineTo(x - r, y); ctx.closePath(); break;
    case "cross": { const w = r * 0.4; ctx.rect(x - r, y - w, 2 * r, 2 * w); ctx.rect(x - w, y - r, 2 * w, 2 * r); break; }
    default: ctx.moveTo(x + r, y); ctx.arc(x, y, r, 0, 2 * Math.PI);
  }
}

class GraphView {
  constructor(canvas, tooltip) {
    this.canvas = canvas; this.tooltip = tooltip; this.ctx = canvas.getContext("2d");
    this.n = 0; this.radius = 4; this.showEdges = true; this.highlight = null; this.selected = -1;
    this.view = {x0: 0, y0: 0, scaleX: 1, scaleY: 1, l: 0, t: 0}; this.userMoved = false; this.layoutKey = null;
    this.onSelect = () => {}; this.describe = () => ""; this.drawnCount = 0; this.pending = false;
    this._bindEvents();
    new ResizeObserver(() => this.fit(!this.userMoved)).observe(canvas);
  }

  setData(d) {
    const n = d.id.length;
    this.d = d; this.n = n;
    this.xs = Float64Array.from(d.x, v => (v === null ? NaN : v));
    this.ys = Float64Array.from(d.y, v => (v === null ? NaN : v));
    this.parent = Int32Array.from(d.parent);
    this.mergeEdges = d.merge_edges || [];  // [child, parent] of each merge's parents after the first
    this.index = new Map(); d.id.forEach((id, i) => this.index.set(id, i));
    this.sx = new Float32Array(n); this.sy = new Float32Array(n);
    const key = d.layout;
    this._bounds();
    if (key !== this.layoutKey || !this.userMoved) { this.layoutKey = key; this.userMoved = false; this.fit(true); }
    this.setColors(d.color ? d.color.values : null);
  }

  setColors(values) {
    const n = this.n, bins = new Uint8Array(n);
    let lo = Infinity, hi = -Infinity;
    if (values) for (const v of values) if (v !== null && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi > lo ? hi - lo : 1;
    for (let i = 0; i < n; i++) {
      const v = values ? values[i] : null;
      bins[i] = (v === null || !Number.isFinite(v)) ? N_BINS : Math.round(((v - lo) / span) * (N_BINS - 1));
    }
    this.colorValues = values; this.colorRange = values && lo <= hi ? [lo, hi] : null; this.bins = bins;
    const counts = new Int32Array(N_BINS + 2);  // counting sort: no value first, then low to high
    for (let i = 0; i < n; i++) counts[(bins[i] + 1) % (N_BINS + 1) + 1]++;
    for (let k = 0; k <= N_BINS; k++) counts[k + 1] += counts[k];
    this.order = new Int32Array(n);
    for (let i = 0; i < n; i++) this.order[counts[(bins[i] + 1) % (N_BINS + 1)]++] = i;
    this.request();
  }

  setHighlight(ids) {
    this.highlight = ids ? new Set(ids) : null;
    this.request();
  }

  setSelected(id) { this.selected = this.index && this.index.has(id) ? this.index.get(id) : -1; this.request(); }

  _bounds() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < this.n; i++) {
      const x = this.xs[i], y = this.ys[i];
      if (Number.isNaN(x) || Number.isNaN(y)) continue;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (x0 > x1) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    this.bounds = {x0, x1, y0, y1};
  }

  fit(reset = true) {
    const dpr = window.devicePixelRatio || 1, rect = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(rect.width * dpr)); this.canvas.height = Math.max(1, Math.round(rect.height * dpr));
    this.w = rect.width; this.h = rect.height; this.dpr = dpr;
    if (reset && this.bounds) {
      const {x0, x1, y0, y1} = this.bounds, pad = {l: 64, r: 24, t: 46, b: 44};
      const innerW = this.w - pad.l - pad.r, innerH = this.h - pad.t - pad.b;
      const spanX = Math.max(x1 - x0, 1e-12), spanY = Math.max(y1 - y0, 1e-12);
      let kx = innerW / spanX, ky = innerH / spanY;
      // lineage lanes are categories: each axis scales on its own (rows at most 40 px apart);
      // PCA keeps one scale for both axes, since distances in weight space mean something
      if (this.layoutKey === "lineage") ky = Math.min(ky, 40); else kx = ky = Math.min(kx, ky);
      this.view = {scaleX: kx, scaleY: ky, x0, y0: y1,  // data (x0, y1) sits at screen (l, t)
        l: pad.l + (innerW - spanX * kx) / 2, t: pad.t + (innerH - spanY * ky) / 2};
    }
    this.request();
  }

  toScreen(x, y) { const v = this.view; return [v.l + (x - v.x0) * v.scaleX, v.t + (v.y0 - y) * v.scaleY]; }
  toData(px, py) { const v = this.view; return [v.x0 + (px - v.l) / v.scaleX, v.y0 - (py - v.t) / v.scaleY]; }

  screenPos(id) {  // used by tests and the node panel: where a node is on the page
    const i = this.index.get(id), r = this.canvas.getBoundingClientRect();
    if (i === undefined) return null;
    const [x, y] = this.toScreen(this.xs[i], this.ys[i]);
    return {x: r.left + x, y: r.top + y};
  }

  request() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const ctx = this.ctx, n = this.n, W = this.canvas.width, H = this.canvas.height, dpr = this.dpr;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);  // opaque: the pixel blending below assumes it
    if (!this.d) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this._axes(ctx);
    const sx = this.sx, sy = this.sy;
    let placed = 0;
    for (let i = 0; i < n; i++) {
      const [a, b] = this.toScreen(this.xs[i], this.ys[i]);
      sx[i] = a; sy[i] = b; if (!Number.isNaN(a) && !Number.isNaN(b)) placed++;
    }
    const vectorEdges = this.showEdges && n <= VECTOR_EDGES_MAX;
    if (vectorEdges) this._vectorEdges(ctx);
    const img = ctx.getImageData(0, 0, W, H);
    if (this.showEdges && !vectorEdges) this._rasterEdges(img.data, W, H);
    this._rasterPoints(img.data, W, H);
    ctx.putImageData(img, 0, 0);
    if (this.selected >= 0) {
      ctx.strokeStyle = "#e03131"; ctx.lineWidth = 2.5; ctx.beginPath();
      ctx.arc(sx[this.selected], sy[this.selected], this.radius + 5, 0, 2 * Math.PI); ctx.stroke();
    }
    this.drawnCount = placed;  // nodes with a position (tests compare it with the store's count)
    this._buildGrid();
  }

  _rasterPoints(data, W, H) {
    const {shapeMask, stamp} = window.raster, dpr = this.dpr, r = this.radius * dpr, hl = this.highlight;
    const ids = this.d.id, shapeOf = this.d.op, sx = this.sx, sy = this.sy, pad = 2 * r + 2;
    const visible = i => !Number.isNaN(sx[i]) && sx[i] * dpr > -pad && sy[i] * dpr > -pad &&
      sx[i] * dpr < W + pad && sy[i] * dpr < H + pad;
    const shapeIdx = i => shapeOf[i] % SHAPES.length;
    if (hl) {  // the rest first, small and pale, so the highlighted nodes stand out on top
      const faded = SHAPES.map(s => shapeMask(s, r * 0.8));
      for (let i = 0; i < this.n; i++) {
        if (!hl.has(ids[i]) && visible(i)) stamp(data, W, H, Math.floor(sx[i] * dpr), Math.floor(sy[i] * dpr), faded[shapeIdx(i)], FADED_RGB, 0.35);
      }
    }
    const rr = hl ? r * 1.35 : r, masks = SHAPES.map(s => shapeMask(s, rr));
    const rings = hl ? SHAPES.map(s => shapeMask(s, rr + 1.6 * dpr)) : null;
    for (const i of this.order) {  // by colour value, highest on top
      if (!visible(i) || (hl && !hl.has(ids[i]))) continue;
      const x = Math.floor(sx[i] * dpr), y = Math.floor(sy[i] * dpr), k = shapeIdx(i);
      if (rings) stamp(data, W, H, x, y, rings[k], RING_RGB, 1);
      stamp(data, W, H, x, y, masks[k], this.bins[i] === N_BINS ? NULL_RGB : PALETTE_RGB[this.bins[i]], 1);
    }
  }

  _rasterEdges(data, W, H) {
    const {sx, sy, parent, n, dpr} = this, line = window.raster.line, a = this.highlight ? 0.18 : 0.35;
    for (let i = 0; i < n; i++) {
      const p = parent[i];
      if (p < 0 || Number.isNaN(sx[i]) || Number.isNaN(sx[p])) continue;
      line(data, W, H, sx[p] * dpr, sy[p] * dpr, sx[i] * dpr, sy[i] * dpr, EDGE_RGB, a);
    }
    for (const [i, p] of this.mergeEdges) {
      if (Number.isNaN(sx[i]) || Number.isNaN(sx[p])) continue;
      line(data, W, H, sx[p] * dpr, sy[p] * dpr, sx[i] * dpr, sy[i] * dpr, EDGE_RGB, a);
    }
  }

  _vectorEdges(ctx) {  // antialiased lines while there are few
    const {sx, sy, parent, n} = this;
    ctx.strokeStyle = this.highlight ? "rgba(140,150,165,0.25)" : "rgba(120,130,150,0.5)";
    ctx.lineWidth = 1; ctx.beginPath();
    for (let i = 0; i < n; i++) {
      const p = parent[i];
      if (p < 0 || Number.isNaN(sx[i]) || Number.isNaN(sx[p])) continue;
      ctx.moveTo(sx[p], sy[p]); ctx.lineTo(sx[i], sy[i]);
    }
    for (const [i, p] of this.mergeEdges) {
      if (Number.isNaN(sx[i]) || Number.isNaN(sx[p])) continue;
      ctx.moveTo(sx[p], sy[p]); ctx.lineTo(sx[i], sy[i]);
    }
    ctx.stroke();
  }

  _axes(ctx) {
    const [xa, ya] = this.d.axes || ["", ""];
    const [dx0, dy1] = this.toData(0, 0), [dx1, dy0] = this.toData(this.w, this.h);
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#8a93a6"; ctx.strokeStyle = "#eef0f4"; ctx.lineWidth = 1;
    const lineage = this.d.layout === "lineage";
    for (const t of niceTicks(dx0, dx1, 8)) {
      const [x] = this.toScreen(t, 0);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, this.h - 30); ctx.stroke();
      ctx.textAlign = "center"; ctx.fillText(fmt(t), x, this.h - 18);
    }
    if (!lineage) for (const t of niceTicks(dy0, dy1, 6)) {
      const [, y] = this.toScreen(0, t);
      ctx.beginPath(); ctx.moveTo(52, y); ctx.lineTo(this.w, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(fmt(t), 48, y + 4);
    }
    ctx.fillStyle = "#5c6478"; ctx.font = "12px system-ui, sans-serif"; ctx.textAlign = "center";
    ctx.fillText(xa, this.w / 2, this.h - 4);
    ctx.save(); ctx.translate(13, this.h / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(ya, 0, 0); ctx.restore();
    if (lineage) this._laneLabels(ctx);
  }

  _laneLabels(ctx) {  // each branch row named by the run of its first node
    const first = new Map(), d = this.d;
    for (let i = 0; i < this.n; i++) if (!first.has(this.ys[i])) first.set(this.ys[i], i);
    if (first.size > 60) return;
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#5c6478"; ctx.textAlign = "left";
    for (const [y, i] of first) {
      const [px, py] = this.toScreen(this.xs[i], y);
      ctx.fillText(d.runs[d.run[i]] || "", Math.max(px, 24), py - 9);
    }
  }

  _buildGrid() {  // counting sort of visible nodes into 16-px cells: O(1) hover lookups
    const cell = 16, cols = Math.ceil(this.w / cell) + 1, rows = Math.ceil(this.h / cell) + 1, n = this.n;
    const cellOf = new Int32Array(n), counts = new Int32Array(cols * rows + 1);
    for (let i = 0; i < n; i++) {
      const cx = Math.floor(this.sx[i] / cell), cy = Math.floor(this.sy[i] / cell);
      const c = cx >= 0 && cy >= 0 && cx < cols && cy < rows ? cy * cols + cx : -1;
      cellOf[i] = c; if (c >= 0) counts[c + 1]++;
    }
    for (let c = 0; c < cols * rows; c++) counts[c + 1] += counts[c];
    const order = new Int32Array(counts[cols * rows]), fill = counts.slice();
    for (let i = 0; i < n; i++) if (cellOf[i] >= 0) order[fill[cellOf[i]]++] = i;
    this.grid = {cell, cols, rows, start: counts, order};
  }

  nearest(px, py) {
    const g = this.grid; if (!g) return -1;
    let best = -1, bestD = HOVER_PX * HOVER_PX;
    const cx = Math.floor(px / g.cell), cy = Math.floor(py / g.cell);
    for (let y = cy - 1; y <= cy + 1; y++) for (let x = cx - 1; x <= cx + 1; x++) {
      if (x < 0 || y < 0 || x >= g.cols || y >= g.rows) continue;
      const c = y * g.cols + x;
      for (let k = g.start[c]; k < g.start[c + 1]; k++) {
        const i = g.order[k], ddx = this.sx[i] - px, ddy = this.sy[i] - py, dd = ddx * ddx + ddy * ddy;
        if (dd < bestD || (dd === bestD && i > best)) { best = i; bestD = dd; }  // ties: the newer node
      }
    }
    return best;
  }

  _bindEvents() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("mousedown", e => { drag = {x: e.offsetX, y: e.offsetY, moved: false}; });
    window.addEventListener("mouseup", () => { drag = null; });
    c.addEventListener("mousemove", e => {
      if (drag && e.buttons) {
        const ddx = e.offsetX - drag.x, ddy = e.offsetY - drag.y;
        if (Math.abs(ddx) + Math.abs(ddy) > 2) drag.moved = true;
        this.view.x0 -= ddx / this.view.scaleX; this.view.y0 += ddy / this.view.scaleY;
        drag.x = e.offsetX; drag.y = e.offsetY; this.userMoved = true; this.request();
        return;
      }
      const i = this.nearest(e.offsetX, e.offsetY);
      if (i < 0) { this.tooltip.hidden = true; c.style.cursor = "crosshair"; return; }
      c.style.cursor = "pointer";
      this.tooltip.innerHTML = this.describe(i);
      this.tooltip.hidden = false;
      const left = Math.min(e.offsetX + 14, this.w - this.tooltip.offsetWidth - 4);
      this.tooltip.style.left = `${left}px`; this.tooltip.style.top = `${Math.max(e.offsetY - 10, 4)}px`;
    });
    c.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    c.addEventListener("click", e => {
      if (drag && drag.moved) return;
      const i = this.nearest(e.offsetX, e.offsetY);
      if (i >= 0) this.onSelect(this.d.id[i]);
    });
    c.addEventListener("dblclick", () => { this.userMoved = false; this.fit(true); });
    c.addEventListener("wheel", e => {
      e.preventDefault();
      const f = Math.exp(-e.deltaY * 0.0015), [dx, dy] = this.toData(e.offsetX, e.offsetY), v = this.view;
      v.scaleX *= f; v.scaleY *= f;
      v.x0 = dx - (e.offsetX - v.l) / v.scaleX; v.y0 = dy + (e.offsetY - v.t) / v.scaleY;
      this.userMoved = true; this.request();
    }, {passive: false});
  }
}

window.GraphView = GraphView;
window.graphUtil = {viridis, fmt, fmtMetric, fmtMetricSe, metricUnit, shapePath, GLYPHS, SHAPES, NULL_COLOR};
})();
