// The Train page: a form that starts a run (POST /api/train), and a view of the run that every
// tab fills from the same server-sent events (/api/train/events).
"use strict";

const view = window.trainView = {updates: 0, state: "idle", run: null, events: []};
const $ = id => document.getElementById(id);
let opts = null, charts = {}, data = {}, hists = {}, steps = 1, epochs = 1;

function width(id) { return Math.max(240, $(id).clientWidth); }
function lrOpts() {
  const o = chartOpts("lr", width("c-lr"), [{label: "lr", stroke: PALETTE[4]}]);
  o.axes[1].values = (u, vals) => vals.map(v => v === 0 ? "0" : v.toExponential(1));
  return o;
}

function reset() {
  data = {step: [], loss: [], lr: [], epoch: [], train: [], valid: [], acc: []};
  for (const c of Object.values(charts)) c.destroy();
  charts = {
    loss: new uPlot(chartOpts("loss", width("c-loss"), ["train loss"]), [[], []], $("c-loss")),
    epoch: new uPlot({...chartOpts("epoch", width("c-epoch"),
      ["train_loss", "valid_loss", {label: "valid_accuracy", stroke: PALETTE[2]}], "epoch"),
      series: [{label: "epoch"},
        {label: "train_loss", stroke: PALETTE[0], width: 2, points: {show: true}},
        {label: "valid_loss", stroke: PALETTE[1], width: 2, points: {show: true}},
        {label: "valid_accuracy", stroke: PALETTE[2], width: 2, points: {show: true}, scale: "acc"}],
      axes: [...chartOpts("", 1, [], "epoch").axes,
        {scale: "acc", side: 1, stroke: PALETTE[2], grid: {show: false}, size: 44}],
      scales: {x: {time: false}, acc: {range: [0, 1]}}}, [[], [], [], []], $("c-epoch")),
    lr: new uPlot(lrOpts(), [[], []], $("c-lr")),
  };
  hists = {}; $("hists").replaceChildren(); $("stats").tBodies[0].replaceChildren();
  $("log").textContent = ""; $("cards").replaceChildren(); $("bar").style.width = "0";
}

function setState(state, run) {
  view.state = state; if (run !== undefined) view.run = run;
  $("state").textContent = state; $("state").className = "pill " + state;
  document.body.dataset.state = state;
  $("stop").disabled = state !== "running";
  $("start").disabled = state === "running" || state === "stopping";
  $("resume").disabled = !(["stopped", "failed", "done"].includes(state) && view.run);
  if (view.run) {
    $("run-title").textContent = `run ${view.run}`;
    $("where").textContent = `runs/${view.run}`;
  }
}

function cards(row) {
  const keys = ["epoch", "train_loss", "valid_loss", "valid_accuracy", "lr"];
  $("cards").replaceChildren(...keys.filter(k => k in row).map(k => {
    const d = document.createElement("div");
    d.className = "card";
    d.innerHTML = `<div class="k">${k}</div><div class="v">${k === "epoch" ? `${row[k]}/${epochs}` : fmt(row[k], k === "lr" ? 5 : 4)}</div>`;
    return d;
  }));
}

function histCanvas(key, label) {
  if (hists[key]) return hists[key];
  const box = document.createElement("div");
  box.className = "hist";
  box.innerHTML = `<h3>${label}</h3><canvas width="1" height="40"></canvas><div class="sub"><span class="lo"></span><span class="hi"></span></div>`;
  $("hists").append(box);
  return hists[key] = {box, canvas: box.querySelector("canvas"), cols: []};
}

function addHist(key, label, s) {
  const h = histCanvas(key, label);
  const max = Math.max(1, ...s.hist);
  h.cols.push(s.hist.map(v => Math.round(255 * Math.log1p(v) / Math.log1p(max))));
  if (h.cols.length > 240) h.cols.shift();
  const n = s.hist.length, W = h.cols.length, c = h.canvas, ctx = c.getContext("2d");
  c.width = W; c.height = n;
  const img = ctx.createImageData(W, n);
  h.cols.forEach((col, x) => col.forEach((v, b) => {
    const p = ((n - 1 - b) * W + x) * 4;  // low bins at the bottom
    img.data.set([HEAT[v * 3], HEAT[v * 3 + 1], HEAT[v * 3 + 2], 255], p);
  }));
  ctx.putImageData(img, 0, 0);
  h.box.querySelector(".lo").textContent = s.log ? `1e${s.lo.toFixed(0)}` : fmt(s.lo, 2);
  h.box.querySelector(".hi").textContent = s.log ? `1e${s.hi.toFixed(0)} (log10 |g|)` : `${fmt(s.hi, 2)} (value)`;
}

function statsRow(l) {
  const tb = $("stats").tBodies[0];
  let tr = tb.querySelector(`tr[data-layer="${CSS.escape(l.name)}"]`);
  if (!tr) { tr = tb.insertRow(); tr.dataset.layer = l.name; }
  const a = l.act || {}, g = l.grad || {};
  tr.innerHTML = `<td>${l.label}</td><td class="num">${fmt(a.mean, 3)}</td><td class="num">${fmt(a.std, 3)}</td>
    <td class="num">${a.near_zero === undefined ? "–" : (100 * a.near_zero).toFixed(1)}</td>
    <td class="num">${fmt(g.mean, 3)}</td><td class="num">${fmt(g.std, 3)}</td>
    <td class="num">${g.near_zero === undefined ? "–" : (100 * g.near_zero).toFixed(1)}</td>`;
}

function handle(e) {
  view.updates++; view.events.push(e.type);
  switch (e.type) {
    case "begin":
      reset(); setState("running", e.run);
      epochs = e.config.epochs || epochs; break;
    case "start":
      steps = e.steps_per_epoch; epochs = e.epochs; break;
    case "log": $("log").textContent += e.text + "\n"; $("log").scrollTop = 1e9; break;
    case "batch":
      data.step.push(e.step); data.loss.push(e.loss); data.lr.push(e.lr);
      charts.loss.setData([data.step, data.loss]); charts.lr.setData([data.step, data.lr]);
      $("bar").style.width = `${Math.min(100, 100 * e.step / (steps * epochs))}%`; break;
    case "epoch":
      data.epoch.push(e.epoch); data.train.push(e.train_loss ?? null);
      data.valid.push(e.valid_loss ?? null); data.acc.push(e.valid_accuracy ?? null);
      charts.epoch.setData([data.epoch, data.train, data.valid, data.acc]);
      $("bar").style.width = `${100 * e.epoch / epochs}%`; cards(e); break;
    case "stats":
      for (const l of e.layers) {
        statsRow(l);
        if (l.act) addHist(l.name + ":act", `${l.label} · activations`, l.act);
        if (l.grad) addHist(l.name + ":grad", `${l.label} · gradients`, l.grad);
      }
      break;
    case "done": setState("done", e.run); $("bar").style.width = "100%"; break;
    case "stopped": setState("stopped", e.run); break;
    case "error": setState("failed", e.run); $("error").textContent = e.message; break;
  }
}

function connect() {
  const es = new EventSource("/api/train/events");
  for (const t of ["begin", "start", "log", "batch", "epoch", "stats", "done", "stopped", "error"]) {
    es.addEventListener(t, m => handle(JSON.parse(m.data)));
  }
}

function fillForm(model) {
  const r = opts.recipes[model];
  for (const k of ["epochs", "lr", "bs"]) $(k).value = r[k] ?? "";
  $("opt").value = r.opt; $("hidden").value = r.hidden ?? ""; $("hidden").disabled = model === "cnn";
}

async function init() {
  opts = await api("/api/options");
  $("data").replaceChildren(...opts.data.map(d => new Option(d, d)));
  $("model").replaceChildren(...opts.models.map(m => new Option(m, m)));
  $("opt").replaceChildren(...opts.optimizers.map(o => new Option(o, o)));
  $("model").value = "mlp"; fillForm("mlp");
  $("model").onchange = () => fillForm($("model").value);
  reset();
  const st = await api("/api/train");
  setState(st.state === "idle" ? "idle" : st.state, st.run || undefined);
  connect();
}

$("start").onclick = async () => {
  const body = {};
  for (const k of ["data", "model", "epochs", "lr", "opt", "bs", "hidden", "name"]) {
    const el = $(k); if (el.disabled || el.value === "") continue;
    body[k] = el.type === "number" ? Number(el.value) : el.value;
  }
  if (body.model === "cnn") delete body.hidden;
  $("error").textContent = "";
  try { const r = await api("/api/train", body); setState("running", r.run); }
  catch (e) { $("error").textContent = e.message; }
};
$("stop").onclick = async () => {
  try { await api("/api/train/stop", {}); setState("stopping"); } catch (e) { $("error").textContent = e.message; }
};
$("resume").onclick = async () => {
  const body = {run: view.run};
  if ($("resume-epochs").value) body.epochs = Number($("resume-epochs").value);
  $("error").textContent = "";
  try { await api("/api/train/resume", body); } catch (e) { $("error").textContent = e.message; }
};
init().catch(e => { $("error").textContent = e.message; });
