// Pixel-level drawing for the graph: nodes stamped from antialiased shape masks and paths drawn
// by DDA, straight into an ImageData. Canvas paths slow down where shapes overlap (5,000 nodes in
// a 30-px cluster took seconds in the scanline fill); a stamp costs the same wherever a node sits.
(() => {
"use strict";

const maskCache = new Map();

function shapeMask(shape, r) {  // r in device pixels
  const key = `${shape}:${r.toFixed(2)}`;
  if (maskCache.has(key)) return maskCache.get(key);
  const half = Math.ceil(r * 1.25) + 1, size = 2 * half + 1;
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000"; ctx.beginPath();
  window.graphUtil.shapePath(ctx, shape, half + 0.5, half + 0.5, r); ctx.fill();
  const px = ctx.getImageData(0, 0, size, size).data, offs = [], alpha = [];
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) {
    const a = px[(y * size + x) * 4 + 3];
    if (a) { offs.push(x - half, y - half); alpha.push(a / 255); }
  }
  const mask = {offs: Int16Array.from(offs), alpha: Float32Array.from(alpha)};
  maskCache.set(key, mask);
  return mask;
}

// blend colour (r, g, b) at `opacity` into the pixels under `mask`, centred on device pixel (cx, cy)
function stamp(data, W, H, cx, cy, mask, rgb, opacity) {
  const {offs, alpha} = mask, [r, g, b] = rgb;
  for (let k = 0, j = 0; k < alpha.length; k++, j += 2) {
    const x = cx + offs[j], y = cy + offs[j + 1];
    if (x < 0 || y < 0 || x >= W || y >= H) continue;
    const a = alpha[k] * opacity, d = (y * W + x) * 4;
    data[d] += (r - data[d]) * a; data[d + 1] += (g - data[d + 1]) * a; data[d + 2] += (b - data[d + 2]) * a;
  }
}

// a 1-px line from (x0, y0) to (x1, y1), clipped to the image first (Liang-Barsky): a zoomed-in
// view must not walk millions of off-screen pixels
function line(data, W, H, x0, y0, x1, y1, rgb, a) {
  const dx = x1 - x0, dy = y1 - y0;
  let t0 = 0, t1 = 1;
  const edges = [[-dx, x0], [dx, W - 1 - x0], [-dy, y0], [dy, H - 1 - y0]];
  for (const [p, q] of edges) {
    if (p === 0) { if (q < 0) return; continue; }
    const t = q / p;
    if (p < 0) { if (t > t1) return; if (t > t0) t0 = t; } else { if (t < t0) return; if (t < t1) t1 = t; }
  }
  const ax = x0 + t0 * dx, ay = y0 + t0 * dy, bx = x0 + t1 * dx, by = y0 + t1 * dy;
  const steps = Math.max(1, Math.ceil(Math.max(Math.abs(bx - ax), Math.abs(by - ay))));
  const ux = (bx - ax) / steps, uy = (by - ay) / steps, [r, g, b] = rgb;
  let x = ax, y = ay;
  for (let s = 0; s <= steps; s++, x += ux, y += uy) {
    const d = ((y | 0) * W + (x | 0)) * 4;
    data[d] += (r - data[d]) * a; data[d + 1] += (g - data[d + 1]) * a; data[d + 2] += (b - data[d + 2]) * a;
  }
}

window.raster = {shapeMask, stamp, line};
})();
