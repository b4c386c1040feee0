// Helpers the three pages share: the API, decoding the server's byte-encoded tensors, colour
// maps, and drawing a tensor into a canvas at its native resolution (CSS scales it).
"use strict";

async function api(path, body) {
  const opts = body === undefined ? {} :
    {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function bytesOf(enc) {  // {data: base64 of uint8} -> Uint8Array
  const s = atob(enc.data), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function lut(stops) {  // 256 RGB entries interpolated between colour stops [[t, r, g, b], ...]
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    let k = 0;
    while (k < stops.length - 2 && t > stops[k + 1][0]) k++;
    const [t0, ...a] = stops[k], [t1, ...b] = stops[k + 1];
    const f = Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
    for (let c = 0; c < 3; c++) out[i * 3 + c] = a[c] + (b[c] - a[c]) * f;
  }
  return out;
}
// "inferno"-like for activations (dark = 0), blue-black-orange for signed gradients.
const HEAT = lut([[0, 0, 0, 4], [0.25, 87, 16, 110], [0.5, 188, 55, 84], [0.75, 249, 142, 9], [1, 252, 255, 164]]);
const DIVERGE = lut([[0, 92, 207, 230], [0.5, 12, 14, 22], [1, 255, 180, 84]]);
const GRAY = lut([[0, 0, 0, 0], [1, 255, 255, 255]]);

function legend(el, map, lo, hi) {
  const c = document.createElement("canvas");
  c.width = 256; c.height = 1;
  const img = c.getContext("2d").createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    img.data.set([map[i * 3], map[i * 3 + 1], map[i * 3 + 2], 255], i * 4);
  }
  c.getContext("2d").putImageData(img, 0, 0);
  el.replaceChildren(lo, c, hi);
}

// Paint tiles of h x w values (bytes 0..255 through `map`) into `canvas`, `cols` tiles a row,
// with a one-pixel gap; returns the canvas's native size.
function paintTiles(canvas, bytes, n, h, w, cols, map) {
  const rows = Math.ceil(n / cols), gap = n > 1 && h > 1 ? 1 : 0;
  const W = cols * (w + gap) - gap, H = rows * (h + gap) - gap;
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H);
  for (let i = 0; i < W * H; i++) img.data[i * 4 + 3] = 0;
  for (let t = 0; t < n; t++) {
    const oy = Math.floor(t / cols) * (h + gap), ox = (t % cols) * (w + gap);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const v = bytes[t * h * w + y * w + x], p = ((oy + y) * W + ox + x) * 4;
      img.data[p] = map[v * 3]; img.data[p + 1] = map[v * 3 + 1]; img.data[p + 2] = map[v * 3 + 2];
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  return [W, H];
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(digits);
}

const PALETTE = ["#ffb454", "#5ccfe6", "#7fd962", "#ff6b6b", "#c792ea", "#f78c6c", "#82aaff", "#ffd580"];

function chartOpts(title, width, series, xLabel = "step", logY = false) {
  const axis = {stroke: "#8d99b8", grid: {stroke: "#2a3553", width: 1}, ticks: {stroke: "#2a3553"}};
  return {
    width, height: 180, title: undefined, legend: {live: false},
    scales: {x: {time: false}, y: logY ? {distr: 3} : {}},
    axes: [{...axis, label: xLabel, labelSize: 18, size: 36,
      ...(xLabel === "epoch" ? {incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500]} : {})}, {...axis, size: 56}],
    series: [{label: xLabel}, ...series.map((s, i) => ({
      label: s.label || s, stroke: s.stroke || PALETTE[i % PALETTE.length], width: s.width || 2,
      spanGaps: true, points: {show: s.points ?? false, size: 6},
    }))],
    cursor: {drag: {x: false, y: false}},
  };
}

function markNav() {
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.getAttribute("href") === location.pathname) a.classList.add("active");
  }
}
document.addEventListener("DOMContentLoaded", markNav);
