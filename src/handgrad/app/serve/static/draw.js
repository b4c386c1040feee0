// The Draw page: strokes on a canvas -> POST /api/predict (a PNG of the canvas) -> the input
// the model saw, the probabilities, every layer and the saliency. One request at a time; while
// one is out, further strokes only mark the drawing dirty, and the newest drawing goes next.
"use strict";

const board = document.getElementById("board");
const ctx = board.getContext("2d");
const lab = window.lab = {drawSeq: 0, shownSeq: 0, inFlight: false, target: null, last: null, requests: 0};
let strokes = [], current = null;

function paintBoard() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, board.width, board.height);
  ctx.strokeStyle = "#fff"; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = 20;
  for (const s of strokes) {
    ctx.beginPath(); ctx.moveTo(s[0][0], s[0][1]);
    for (const [x, y] of s.length > 1 ? s.slice(1) : [[s[0][0] + 0.1, s[0][1]]]) ctx.lineTo(x, y);
    ctx.stroke();
  }
}

function at(ev) {
  const r = board.getBoundingClientRect();
  return [(ev.clientX - r.left) * board.width / r.width, (ev.clientY - r.top) * board.height / r.height];
}
board.addEventListener("pointerdown", ev => {
  board.setPointerCapture(ev.pointerId);
  current = [at(ev)]; strokes.push(current); changed();
});
board.addEventListener("pointermove", ev => {
  if (!current) return;
  for (const e of ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev]) current.push(at(e));
  changed();
});
for (const type of ["pointerup", "pointercancel"]) board.addEventListener(type, () => { current = null; });
document.getElementById("clear").onclick = () => { strokes = []; changed(); };
document.getElementById("undo").onclick = () => { strokes.pop(); changed(); };
document.getElementById("auto").onclick = () => { lab.target = null; lab.drawSeq++; pump(); };

function changed() { paintBoard(); lab.drawSeq++; pump(); }

async function pump() {
  if (lab.inFlight || lab.shownSeq === lab.drawSeq) return;
  const seq = lab.drawSeq;
  if (!strokes.length) { showEmpty(); lab.shownSeq = seq; return; }
  lab.inFlight = true;
  const t0 = performance.now();
  try {
    const r = await api("/api/predict", {image: board.toDataURL("image/png"), target: lab.target});
    lab.requests++;
    show(r, performance.now() - t0);
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = e.message;
  } finally {
    lab.shownSeq = seq; lab.inFlight = false;
    document.body.dataset.shown = String(seq);
  }
  if (lab.shownSeq !== lab.drawSeq) requestAnimationFrame(pump);
}

function showEmpty() {
  lab.last = null;
  document.getElementById("verdict").textContent = "?";
  document.getElementById("layers").innerHTML = '<div class="empty">Draw something: every layer\'s activations appear here.</div>';
  for (const id of ["seen", "saliency"]) document.getElementById(id).getContext("2d").clearRect(0, 0, 28, 28);
  renderProbs(null);
}

function show(r, ms) {
  lab.last = r;
  document.getElementById("verdict").textContent = r.classes[r.predicted];
  document.getElementById("timing").textContent =
    `server ${r.server_ms.toFixed(1)} ms · round trip ${ms.toFixed(0)} ms`;
  const [h, w] = r.input.shape;
  paintTiles(document.getElementById("seen"), bytesOf(r.input), 1, h, w, 1, GRAY);
  paintTiles(document.getElementById("saliency"), bytesOf(r.saliency).map(v => 255 - v), 1, h, w, 1, DIVERGE);
  document.getElementById("saliency-caption").textContent =
    `input gradient of loss(class ${r.classes[r.target]}), |max| ${fmt(r.saliency.max, 3)}`;
  renderProbs(r);
  renderLayers(r.layers);
}

function renderProbs(r) {
  const box = document.getElementById("probs");
  const classes = r ? r.classes : (box.dataset.classes || "0,1,2,3,4,5,6,7,8,9").split(",");
  box.dataset.classes = classes.join(",");
  box.replaceChildren(...classes.map((c, i) => {
    const p = r ? r.probs[i] : 0, row = document.createElement("div");
    row.className = "prob" + (r && i === r.predicted ? " top" : "") + (r && i === r.target ? " target" : "");
    row.dataset.k = i;
    row.innerHTML = `<div class="label">${c}</div><div class="bar"><div style="width:${(100 * p).toFixed(1)}%"></div></div><div class="pct">${(100 * p).toFixed(1)}%</div>`;
    row.onclick = () => { lab.target = i; lab.drawSeq++; pump(); };
    return row;
  }));
  const auto = document.getElementById("auto");
  auto.disabled = lab.target === null;
  document.getElementById("target-note").textContent = lab.target === null ?
    "gradient toward: the predicted class" : `gradient toward: class ${classes[lab.target]}`;
}

function renderLayers(layers) {
  const box = document.getElementById("layers");
  if (box.children.length !== layers.length || box.querySelector(".empty")) {
    box.replaceChildren(...layers.map(() => {
      const d = document.createElement("div");
      d.className = "layer";
      d.innerHTML = '<div class="name"></div><canvas class="pix"></canvas>';
      return d;
    }));
  }
  layers.forEach((l, i) => {
    const el = box.children[i], canvas = el.querySelector("canvas"), bytes = bytesOf(l);
    el.querySelector(".name").textContent = `${l.name} · ${fmt(l.min, 2)}…${fmt(l.max, 2)}`;
    let size;
    if (l.shape.length === 3) {  // conv feature maps (C, H, W) as small images
      const [c, h, w] = l.shape, cols = Math.ceil(Math.sqrt(c * 1.6));
      size = paintTiles(canvas, bytes, c, h, w, cols, HEAT);
      const scale = Math.max(1, Math.floor(Math.min(4, 260 / size[0])));
      canvas.style.width = `${size[0] * scale}px`;
    } else {  // a vector of units as a grid (the outputs: one row)
      const n = l.shape.reduce((a, b) => a * b, 1);
      const cols = i === layers.length - 1 ? n : Math.ceil(Math.sqrt(n * 2));
      size = paintTiles(canvas, bytes, 1, Math.ceil(n / cols), cols, 1,
        HEAT);
      const scale = Math.max(3, Math.floor(Math.min(22, 260 / size[0])));
      canvas.style.width = `${size[0] * scale}px`;
    }
  });
}

async function loadModels() {
  const pick = document.getElementById("model-pick");
  try {
    const [model, runs] = await Promise.all([api("/api/model").catch(() => null), api("/api/runs")]);
    const usable = runs.runs.filter(r => r.checkpoints.includes("best"));
    pick.replaceChildren(...usable.map(r => new Option(`${r.name} (${r.model})`, r.name)));
    if (model) {
      document.getElementById("model-desc").textContent = `${model.model}: ${model.description}`;
      if (model.run) pick.value = model.run;
      else pick.prepend(new Option(model.path, "")), pick.value = "";
    }
  } catch (e) { document.getElementById("error").textContent = e.message; }
}
document.getElementById("model-pick").onchange = async ev => {
  if (!ev.target.value) return;
  try {
    const m = await api("/api/model", {run: ev.target.value});
    document.getElementById("model-desc").textContent = `${m.model}: ${m.description}`;
    lab.drawSeq++; pump();
  } catch (e) { document.getElementById("error").textContent = e.message; }
};

const actLegend = document.getElementById("act-legend");
legend(actLegend, HEAT, "0 / min", "max");
legend(document.getElementById("saliency-legend"), DIVERGE, "less like it", "more like it");
paintBoard(); renderProbs(null); loadModels();
