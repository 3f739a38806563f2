// The run browser's behaviour: live rows on the runs page (server-sent events) and the charts
// (uPlot, served from /ui/static/vendor/; without it the tables alone are shown).
"use strict";

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s >= 3600) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  if (s >= 60) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function updateRow(r) {
  const body = document.querySelector("#runs tbody");
  if (!body) return;
  let tr = document.getElementById("run-" + r.id);
  if (!tr) {  // a run started after the page loaded: it goes on top
    if (new URLSearchParams(location.search).get("page") > 1) return;
    tr = document.createElement("tr");
    tr.id = "run-" + r.id;
    tr.dataset.run = r.id;
    const link = document.createElement("a");
    link.href = "/ui/runs/" + r.id;
    link.textContent = r.id;
    const first = cell("");
    first.appendChild(link);
    tr.append(first, cell(r.name || "–"), cell(r.kind), cell("", "state"), cell("", "bar"), cell("", "done"),
              cell("", "failed"), cell("", "eta"), cell(new Date(r.created_at * 1000).toISOString().slice(0, 19).replace("T", " ")));
    const bar = tr.querySelector(".bar");
    bar.innerHTML = '<progress max="100"></progress> <span class="percent"></span>';
    body.prepend(tr);
    const count = document.getElementById("run-count");
    if (count) count.textContent = Number(count.textContent) + 1;
  }
  const state = tr.querySelector(".state");
  state.innerHTML = "";
  const span = document.createElement("span");
  span.className = "state-" + r.state;
  span.textContent = r.state;
  state.appendChild(span);
  const progress = tr.querySelector("progress");
  if (progress) progress.value = r.percent;
  const pct = tr.querySelector(".percent");
  if (pct) pct.textContent = r.percent + "%";
  tr.querySelector(".done").textContent = (r.finished + r.failed) + " / " + r.total;
  tr.querySelector(".failed").textContent = r.failed;
  tr.querySelector(".eta").textContent = fmtDuration(r.eta_s);
}

function updateRunPage(r) {
  const facts = document.getElementById("run-facts");
  if (!facts || facts.dataset.run !== r.id) return;
  const state = document.getElementById("run-state");
  state.className = "state-" + r.state;
  state.textContent = r.state;
  document.getElementById("run-progress").textContent = r.finished + " finished, " + r.failed + " failed, " +
    r.in_flight + " in flight, of " + r.total + " (" + r.percent + "%) · elapsed " + fmtDuration(r.elapsed_s) +
    (r.eta_s ? " · ETA " + fmtDuration(r.eta_s) : "");
  // The run ended while the page was open: reload it for its outputs and the resume button.
  if (r.terminal && facts.dataset.terminal === "0") { facts.dataset.terminal = "1"; setTimeout(() => location.reload(), 500); }
}

function liveRunPage() {
  const facts = document.getElementById("run-facts");
  if (!facts || facts.dataset.terminal === "1" || !window.EventSource) return;
  const source = new EventSource("/ui/events");
  source.addEventListener("run", (e) => updateRunPage(JSON.parse(e.data)));
}

function liveRuns() {
  if (!document.getElementById("runs") || !window.EventSource) return;
  const pill = document.getElementById("live");
  const source = new EventSource("/ui/events");
  source.onopen = () => { if (pill) { pill.textContent = "live"; pill.classList.add("on"); } };
  source.onerror = () => { if (pill) { pill.textContent = "reconnecting…"; pill.classList.remove("on"); } };
  source.addEventListener("run", (e) => updateRow(JSON.parse(e.data)));
}

function chartWidth(el) {
  const main = document.querySelector("main");
  return Math.max(320, Math.min(800, (main ? main.clientWidth : 800) - 64));
}

function bandChart(el, series, label, yRange, color) {
  const data = [series.turn, series.high, series.mean, series.low];
  const opts = {
    width: chartWidth(el), height: 260,
    scales: { x: { time: false }, y: { range: yRange } },
    axes: [{ label: "turn", incrs: [1] }, { label: label }],
    series: [
      { label: "turn" },
      { label: "95% CI high", stroke: color + "55", points: { show: false } },
      { label: label, stroke: color, width: 2, points: { size: 6 } },
      { label: "95% CI low", stroke: color + "55", points: { show: false } },
    ],
    bands: [{ series: [1, 3], fill: color + "33" }],
  };
  return new uPlot(opts, data, el);
}

function compareChart(el, d) {
  const turns = Array.from(new Set(d.a.turn.concat(d.b.turn))).sort((x, y) => x - y);
  const at = (s) => turns.map((t) => { const i = s.turn.indexOf(t); return i < 0 ? null : s.mean[i]; });
  const opts = {
    width: chartWidth(el), height: 260,
    scales: { x: { time: false }, y: { range: [0, 10] } },
    axes: [{ label: "turn", incrs: [1] }, { label: "mean judge score" }],
    series: [{ label: "turn" }, { label: "A: " + d.labels[0], stroke: "#1f6feb", width: 2 },
             { label: "B: " + d.labels[1], stroke: "#d1242f", width: 2 }],
  };
  return new uPlot(opts, [turns, at(d.a), at(d.b)], el);
}

function charts() {
  const holder = document.getElementById("chart-data");
  if (!holder) return;
  const d = JSON.parse(holder.textContent);
  if (!window.uPlot) {
    document.querySelectorAll(".chart").forEach((el) => {
      el.textContent = "Charts need uPlot (scripts/get_web_assets.sh); the tables below hold the same figures.";
    });
    return;
  }
  const score = document.getElementById("score-chart");
  if (score && d.score) { bandChart(score, d.score, "mean judge score", [0, 10], "#1f6feb"); score.dataset.drawn = "1"; }
  const inst = document.getElementById("instruction-chart");
  if (inst && d.instructions) { bandChart(inst, d.instructions, "prompt-level accuracy", [0, 1], "#1a7f37"); inst.dataset.drawn = "1"; }
  const cmp = document.getElementById("compare-chart");
  if (cmp && d.a) { compareChart(cmp, d); cmp.dataset.drawn = "1"; }
}

document.addEventListener("DOMContentLoaded", () => { liveRuns(); liveRunPage(); charts(); });
