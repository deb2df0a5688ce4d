// The status page: polls /info.json every second, shows the figures and draws deliveries
// per second over the last five minutes as SVG bars. No library, no build step.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 300;
const CHART = { width: 600, height: 160, left: 48, top: 8, bottom: 4 };
const SVG_NS = "http://www.w3.org/2000/svg";
const FIGURES = ["connected", "deliveries", "channels", "subscriptions"];
// How the connected subscribers split by transport, shown under their figure.
const SPLIT = ["websockets", "event_streams"];
const RATE_FIGURE_S = 5; // the rate figure averages this many seconds, so it reads steadily

const rates = []; // {t: seconds, rate: deliveries per second over the interval ending at t}
let previous = null; // the last sample: {t, deliveries}

function now() {
  return performance.now() / 1000;
}

function format(value) {
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(1);
}

// Deliveries per second over the last RATE_FIGURE_S seconds of the chart.
function recentRate() {
  const since = now() - RATE_FIGURE_S - POLL_MS / 2000;
  const recent = rates.filter((r) => r.t >= since);
  if (!recent.length) return 0;
  return recent.reduce((sum, r) => sum + r.rate, 0) / recent.length;
}

function show(id, value) {
  const element = document.getElementById(id);
  const text = format(value);
  if (element.textContent === text) return;
  element.textContent = text;
  const card = document.getElementById(`figure-${id}`);
  card.classList.add("changed");
  setTimeout(() => card.classList.remove("changed"), 50);
}

function record(deliveries) {
  const t = now();
  if (previous !== null) {
    // A smaller count means the server restarted: its count began again from zero.
    const delivered = deliveries >= previous.deliveries ? deliveries - previous.deliveries : deliveries;
    rates.push({ t, rate: delivered / Math.max(t - previous.t, 0.001) });
  }
  previous = { t, deliveries };
  while (rates.length && rates[0].t < t - WINDOW_S) rates.shift();
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function draw() {
  const chart = document.getElementById("chart");
  const plotWidth = CHART.width - CHART.left;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const top = niceCeiling(Math.max(0, ...rates.map((r) => r.rate)));
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = CHART.top + plotHeight * (1 - fraction);
    parts.push(svg("line", { class: "grid", x1: CHART.left, x2: CHART.width, y1: y, y2: y }));
    parts.push(svg("text", { class: "tick", x: CHART.left - 6, y: y + 4, "text-anchor": "end" },
      format(top * fraction)));
  }
  const t = now();
  const barWidth = Math.max(plotWidth / WINDOW_S, 1);
  for (const { t: at, rate } of rates) {
    const height = (rate / top) * plotHeight;
    if (height <= 0) continue;
    const x = CHART.width - ((t - at) / WINDOW_S) * plotWidth - barWidth;
    parts.push(svg("rect", {
      class: "bar", x: Math.max(x, CHART.left), y: CHART.top + plotHeight - height,
      width: barWidth, height,
    }));
  }
  chart.replaceChildren(...parts);
}

function setLive(ok, detail) {
  const live = document.getElementById("live");
  live.className = ok ? "live ok" : "live down";
  live.textContent = ok ? "live: updated every second" : `server unreachable (${detail}), retrying`;
}

async function poll() {
  try {
    const response = await fetch("/info.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const { stats } = await response.json();
    record(stats.deliveries);
    for (const name of FIGURES) show(name, stats[name]);
    for (const name of SPLIT) document.getElementById(name).textContent = format(stats[name]);
    show("rate", recentRate());
    setLive(true);
  } catch (error) {
    setLive(false, error.message);
  } finally {
    draw();
    setTimeout(poll, POLL_MS);
  }
}

const scheme = location.protocol === "https:" ? "wss" : "ws";
document.getElementById("subscribe-url").textContent = `${scheme}://${location.host}/subscribe`;
poll();
