// The dashboard page: signs in (the key goes once, in a POST body; the session is
// an HttpOnly cookie), then draws the usage the gateway's /dashboard/api returns.
"use strict";

const $ = (id) => document.getElementById(id);
const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const state = { scope: null, keyId: null };

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function dark() {
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
}

function layout(title) {
  const fg = dark() ? "#e6e8eb" : "#1b1f24";
  const grid = dark() ? "#2c333b" : "#e3e7ec";
  return {
    title: { text: title, font: { size: 14 } },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: fg }, margin: { l: 50, r: 10, t: 36, b: 30 },
    legend: { orientation: "h", y: -0.2 },
    xaxis: { type: "date", tickformat: "%b %d", gridcolor: grid, automargin: true },
    yaxis: { gridcolor: grid, zerolinecolor: grid, rangemode: "tozero", automargin: true },
  };
}

function series(rows, periods, model, column, scale) {
  const byPeriod = new Map(rows.filter((r) => r.model === model).map((r) => [r.period, r]));
  return periods.map((p) => {
    const row = byPeriod.get(p);
    const value = row ? row[column] : null;
    return value === null || value === undefined ? (column.includes("_ms_") ? null : 0) : value * (scale || 1);
  });
}

function draw(id, title, traces) {
  Plotly.react($(id), traces, layout(title), { displayModeBar: false, responsive: true });
}

function aliasesOf(rows) {
  return [...new Set(rows.map((r) => r.model).filter((m) => m !== "*"))].sort();
}

function drawCharts(usage) {
  const { rows, periods } = usage;
  const aliases = aliasesOf(rows);
  const lines = (column, scale) => [
    ...aliases.map((a) => ({ name: a, x: periods, y: series(rows, periods, a, column, scale), type: "scatter", mode: "lines+markers" })),
    { name: "total", x: periods, y: series(rows, periods, "*", column, scale), type: "scatter", mode: "lines+markers", line: { width: 3 } },
  ];
  draw("chart-requests", "Requests", lines("requests"));
  draw("chart-tokens", "Input and output tokens (all aliases)", [
    { name: "input", x: periods, y: series(rows, periods, "*", "input_tokens"), type: "bar" },
    { name: "output", x: periods, y: series(rows, periods, "*", "output_tokens"), type: "bar" },
  ]);
  draw("chart-spend", "Spend (USD)", lines("cost_usd"));
  draw("chart-latency", "Latency and TTFT (ms, all aliases)", [
    { name: "latency p50", x: periods, y: series(rows, periods, "*", "latency_ms_p50"), type: "scatter", mode: "lines+markers" },
    { name: "latency p95", x: periods, y: series(rows, periods, "*", "latency_ms_p95"), type: "scatter", mode: "lines+markers" },
    { name: "TTFT p50", x: periods, y: series(rows, periods, "*", "ttft_ms_p50"), type: "scatter", mode: "lines+markers" },
  ]);
  draw("chart-audio", "Audio minutes (prometheus-echo)", [
    { name: "prometheus-echo", x: periods, y: series(rows, periods, "prometheus-echo", "audio_seconds", 1 / 60), type: "bar" },
  ]);
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }));
}

const fixed = (v, n) => (v === null || v === undefined ? "" : Number(v).toFixed(n));

async function refresh() {
  const by = $("by").value;
  const key = $("key-filter").value;
  const q = new URLSearchParams({ by, tz });
  if (key) q.set("key_id", key);
  const usage = await api(`/dashboard/api/usage?${q}`);
  drawCharts(usage);
  fill("usage", usage.rows.map((r) => [r.period, r.model === "*" ? "total" : r.model, r.requests, r.errors,
    r.input_tokens, r.output_tokens, fixed(r.audio_seconds, 3), fixed(r.cost_usd, 6),
    fixed(r.latency_ms_p50, 1), fixed(r.latency_ms_p95, 1), fixed(r.ttft_ms_p50, 1)]));
  const keys = await api(`/dashboard/api/keys?tz=${encodeURIComponent(tz)}`);
  fill("keys", keys.data.map((k) => [k.id, k.name, fixed(k.spend_today_usd, 6), fixed(k.spend_week_usd, 6),
    k.budget_usd, k.rpm, k.tpm]));
  const aliasSelect = $("log-alias");
  for (const alias of aliasesOf(usage.rows)) {
    if (![...aliasSelect.options].some((o) => o.value === alias)) aliasSelect.add(new Option(alias, alias));
  }
  await refreshLog();
}

async function refreshLog() {
  const q = new URLSearchParams({ limit: "100" });
  const key = $("key-filter").value;
  if (key) q.set("key_id", key);
  if ($("log-alias").value) q.set("alias", $("log-alias").value);
  if ($("log-status").value) q.set("status", $("log-status").value);
  const log = await api(`/dashboard/api/requests?${q}`);
  fill("log", log.data.map((r) => [new Date(r.ts * 1000).toISOString(), r.request_id, r.model, r.status,
    r.input_tokens, r.output_tokens, fixed(r.audio_seconds, 3), fixed(r.latency_ms, 1), fixed(r.ttft_ms, 1),
    fixed(r.cost_usd, 6), r.deployment]));
}

// CSV of what is on screen: a table's rows as shown (header included), or the
// chart series of the chosen view, one line per point (chart, series, period, value).
const quote = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
const csvLine = (cells) => cells.map((c) => quote(c === null || c === undefined ? "" : String(c))).join(",");

function csvOf(table) {
  return [...table.querySelectorAll("tr")].map((tr) => csvLine([...tr.children].map((c) => c.textContent))).join("\n") + "\n";
}

const CHARTS = ["requests", "tokens", "spend", "latency", "audio"];

function csvOfCharts() {
  const lines = [csvLine(["chart", "series", "period", "value"])];
  for (const name of CHARTS) {
    for (const trace of $(`chart-${name}`).data || []) {
      trace.x.forEach((x, i) => lines.push(csvLine([name, trace.name, x, trace.y[i]])));
    }
  }
  return lines.join("\n") + "\n";
}

function download(text, name) {
  const blob = new Blob([text], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  URL.revokeObjectURL(a.href);
}

function exportCsv(panel) {
  const by = $("by").value;
  if (panel === "charts") download(csvOfCharts(), `charts-${by}.csv`);
  else download(csvOf($(panel)), `${panel}${panel === "usage" ? `-${by}` : ""}.csv`);
}

async function show(session) {
  state.scope = session.scope;
  state.keyId = session.key_id;
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  $("scope").textContent = session.scope === "admin" ? "Every key (admin)" : `Key ${session.key_id}`;
  const select = $("key-filter");
  select.replaceChildren(new Option(session.scope === "admin" ? "all keys" : session.key_id, ""));
  select.disabled = session.scope !== "admin";
  if (session.scope === "admin") {
    const keys = await api("/dashboard/api/keys");
    for (const k of keys.data) select.add(new Option(`${k.name} (${k.id})`, k.id));
  }
  await refresh();
  document.body.dataset.ready = "yes";
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("key");
  try {
    const session = await api("/dashboard/session", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: input.value }),
    });
    input.value = "";
    $("sign-in-error").hidden = true;
    await show(session);
  } catch (err) {
    $("sign-in-error").textContent = err.message;
    $("sign-in-error").hidden = false;
  }
});
$("sign-out").addEventListener("click", async () => {
  await api("/dashboard/session", { method: "DELETE" });
  location.reload();
});
for (const id of ["by", "key-filter"]) $(id).addEventListener("change", () => { document.body.dataset.ready = "no"; refresh().then(() => { document.body.dataset.ready = "yes"; }); });
for (const id of ["log-alias", "log-status"]) $(id).addEventListener("change", () => { document.body.dataset.ready = "no"; refreshLog().then(() => { document.body.dataset.ready = "yes"; }); });
$("export").addEventListener("click", () => exportCsv("usage"));
for (const button of document.querySelectorAll("button[data-csv]")) {
  button.addEventListener("click", () => exportCsv(button.dataset.csv));
}
