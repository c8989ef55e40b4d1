// Small line charts for the node panel: one metric along a run, the clicked node marked.
(() => {
"use strict";

function lineChart(canvas, xs, ys, opts) {
  const dpr = window.devicePixelRatio || 1, rect = canvas.getBoundingClientRect();
  const w = rect.width || 260, h = rect.height || 130;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const pts = [];  // [x, y, standard error or 0]
  xs.forEach((x, i) => {
    if (x === null || ys[i] === null || !Number.isFinite(ys[i])) return;
    const se = opts.se && Number.isFinite(opts.se[i]) ? opts.se[i] : 0;
    pts.push([x, ys[i], se]);
  });
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#1d2330"; ctx.textAlign = "left";
  ctx.fillText(opts.title, 8, 14);
  if (!pts.length) { ctx.fillStyle = "#8a93a6"; ctx.fillText("no values in this run", 8, 34); return; }
  const xMin = Math.min(...pts.map(p => p[0])), xMax = Math.max(...pts.map(p => p[0]));
  let yMin = Math.min(...pts.map(p => p[1] - p[2])), yMax = Math.max(...pts.map(p => p[1] + p[2]));
  if (yMax === yMin) { yMin -= 0.5 * (Math.abs(yMin) || 1); yMax += 0.5 * (Math.abs(yMax) || 1); }
  const L = 46, R = 10, T = 22, B = 18;
  const X = x => L + (xMax > xMin ? (x - xMin) / (xMax - xMin) : 0.5) * (w - L - R);
  const Y = y => T + (1 - (y - yMin) / (yMax - yMin)) * (h - T - B);
  const fmt = window.graphUtil.fmt;
  ctx.strokeStyle = "#e2e5eb"; ctx.lineWidth = 1; ctx.fillStyle = "#8a93a6"; ctx.textAlign = "right";
  for (const v of [yMin, (yMin + yMax) / 2, yMax]) {
    ctx.beginPath(); ctx.moveTo(L, Y(v)); ctx.lineTo(w - R, Y(v)); ctx.stroke();
    ctx.fillText(fmt(v), L - 4, Y(v) + 4);
  }
  ctx.textAlign = "left"; ctx.fillText(fmt(xMin), L, h - 4);
  ctx.textAlign = "right"; ctx.fillText(`${fmt(xMax)} ${opts.xName || ""}`, w - R, h - 4);
  if (pts.some(p => p[2] > 0)) {  // ±1 standard error: a band along the line, a bar at a lone point
    ctx.fillStyle = "rgba(59, 91, 219, 0.18)"; ctx.strokeStyle = "rgba(59, 91, 219, 0.5)"; ctx.beginPath();
    pts.forEach(([x, y, e], i) => (i ? ctx.lineTo(X(x), Y(y + e)) : ctx.moveTo(X(x), Y(y + e))));
    [...pts].reverse().forEach(([x, y, e]) => ctx.lineTo(X(x), Y(y - e)));
    ctx.closePath(); ctx.fill();
    for (const [x, y, e] of pts) { ctx.beginPath(); ctx.moveTo(X(x), Y(y + e)); ctx.lineTo(X(x), Y(y - e)); ctx.stroke(); }
  }
  ctx.strokeStyle = "#3b5bdb"; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
  if (opts.markX !== null && opts.markX !== undefined) {
    ctx.strokeStyle = "#e03131"; ctx.setLineDash([3, 3]); ctx.beginPath();
    ctx.moveTo(X(opts.markX), T); ctx.lineTo(X(opts.markX), h - B); ctx.stroke(); ctx.setLineDash([]);
    const hit = pts.find(p => p[0] === opts.markX);
    if (hit) {
      ctx.fillStyle = "#e03131"; ctx.beginPath(); ctx.arc(X(hit[0]), Y(hit[1]), 4, 0, 2 * Math.PI); ctx.fill();
    }
  }
}

window.lineChart = lineChart;
})();
