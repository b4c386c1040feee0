// The Runs page: every run folder (GET /api/runs) in a table, the ticked ones' curves overlaid,
// links to each run's report page and to drawing with its model.
"use strict";

const $ = id => document.getElementById(id);
let runs = [], charts = [];

function overlay() {
  const picked = runs.filter(r => document.querySelector(`input[data-run="${CSS.escape(r.name)}"]`)?.checked);
  const n = Math.max(1, ...picked.map(r => r.history.length));
  const x = Array.from({length: n}, (_, i) => i + 1);
  for (const c of charts) c.destroy();
  charts = [["c-acc", "valid_accuracy"], ["c-loss", "valid_loss"]].map(([id, key]) => {
    const series = picked.map((r, i) => ({label: r.name, stroke: PALETTE[runs.indexOf(r) % PALETTE.length], points: true}));
    const ys = picked.map(r => x.map(e => r.history.find(h => h.epoch === e)?.[key] ?? null));
    const o = chartOpts(key, Math.max(300, $(id).clientWidth), series, "epoch");
    o.height = 240; o.legend = {show: true, live: false};
    return new uPlot(o, [x, ...ys], $(id));
  });
}

function render() {
  const tb = $("runs").tBodies[0];
  tb.replaceChildren(...runs.map((r, i) => {
    const tr = document.createElement("tr"), m = r.metrics;
    const draw = r.checkpoints.includes("best") ? `<button data-draw="${r.name}">draw with it</button>` : "";
    tr.innerHTML = `<td><input type="checkbox" data-run="${r.name}" ${i < 8 ? "checked" : ""}>
      <span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span></td>
      <td>${r.name}</td><td>${r.model}</td><td class="num">${r.epochs ?? "–"}</td>
      <td class="num">${fmt(m.train_loss)}</td><td class="num">${fmt(m.valid_loss)}</td>
      <td class="num">${fmt(m.valid_accuracy)}</td><td>${r.best}</td><td>${r.state}</td>
      <td><a href="/runs/${encodeURIComponent(r.name)}/report" target="_blank">report</a> ${draw}</td>`;
    return tr;
  }));
  if (!runs.length) tb.innerHTML = '<tr><td colspan="10" class="empty">No runs yet: start one on the Train page.</td></tr>';
  for (const box of tb.querySelectorAll("input[type=checkbox]")) box.onchange = overlay;
  for (const b of tb.querySelectorAll("button[data-draw]")) {
    b.onclick = async () => {
      try { await api("/api/model", {run: b.dataset.draw}); location.href = "/"; }
      catch (e) { $("error").textContent = e.message; }
    };
  }
  overlay();
}

api("/api/runs").then(r => { runs = r.runs; $("folder").textContent = `folder: ${r.folder}`; render(); })
  .catch(e => { $("error").textContent = e.message; });
