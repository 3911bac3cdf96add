// Faregate dashboard: one page over the /admin/dashboard/* JSON endpoints.
// The master key lives in sessionStorage (this tab only) and goes out as a Bearer header.
// Every value from the server is written with textContent, never as HTML.
"use strict";

const KEY_STORE = "faregate.masterKey";
const PAGE = 25; // recent requests per page
// `list`: each fetch that replaces the recent requests (a load, a search) takes the next number;
// answers can come back out of order (a slow search, a refresh in flight): only the newest is shown.
const state = { timer: null, charts: {}, before: null, beforeId: null, loading: false, reload: false, query: "", pages: 0, list: 0 };
const $ = (id) => document.getElementById(id);

// --- formatting ---------------------------------------------------------------------------

function usd(text) {
  if (text === null || text === undefined) return "–";
  const n = Number(text);
  const abs = Math.abs(n);
  const sign = n < 0 ? "-" : "";
  // Under half a millionth (a short embedding: $0.00000002) six decimals would read "$0.000000",
  // a paid request shown as free: such an amount is shown to two significant digits.
  if (abs > 0 && abs < 0.0000005) return sign + "$" + abs.toLocaleString("en-US", { maximumSignificantDigits: 2 });
  const digits = abs >= 100 ? 2 : abs >= 1 ? 4 : 6;
  return sign + "$" + abs.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(1) + "%");
const ms = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US") + " ms");
function when(t) {
  const d = new Date(t * 1000);
  return d.toLocaleString("en-GB", { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function bucketLabel(t, bucket) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  // A day (or week) bucket starts at 00:00 UTC: named by its UTC day, which west of UTC the local
  // date of that start is not (the day before).
  if (bucket >= 86400) return d.toLocaleDateString("en-GB", { month: "short", day: "numeric", timeZone: "UTC" });
  if (bucket >= 3600) return d.toLocaleDateString("en-GB", { month: "short", day: "numeric" }) + " " + hm;
  return hm;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// columns: [{title, key, value(row) -> text, raw(row) -> data-value, cls(row), width, clip}]
// `width` sizes a column of a fixed-layout table; `clip` marks a text column of names: left-aligned,
// cut with an ellipsis past what fits (a fixed column's width, else a bound: a long route or key
// name would push a table's figures out of its panel), and the whole text in the cell's tooltip.
function fillTable(table, columns, rows, options = {}) {
  table.replaceChildren();
  const head = el("tr", {}, ...columns.map((c) => {
    const th = el("th", { className: c.clip ? "text" : null }, c.title);
    if (c.width) th.style.width = c.width; // through the CSSOM: the page's CSP forbids style attributes
    return th;
  }));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  if (!rows.length) {
    body.append(el("tr", { className: "empty" }, el("td", { colspan: columns.length }, options.empty || "No data in this range")));
  }
  for (const row of rows) {
    const tr = el("tr", { "data-group": options.group ? options.group(row) : null, className: options.rowClass || null });
    for (const c of columns) {
      const text = c.value(row);
      const cls = [c.cls ? c.cls(row) : null, c.clip ? "text" : null].filter(Boolean).join(" ") || null;
      tr.append(el("td", { "data-col": c.key, "data-value": c.raw ? c.raw(row) : null, className: cls, title: c.clip ? String(text) : null }, text));
    }
    if (options.onClick) tr.addEventListener("click", () => options.onClick(row, tr));
    body.append(tr);
  }
  table.append(body);
}

// --- the API ------------------------------------------------------------------------------

class AuthError extends Error {}

// A refused key: the gateway's own words (a wrong key, or admin disabled for want of a master key,
// which no key typed here can fix), else a generic line.
async function authError(response) {
  const body = await response.json().catch(() => ({}));
  return new AuthError((body.error && body.error.message) || "The master key was not accepted.");
}

// A request with no answer (a hung connection, a stalled proxy) is given up after this long: else its
// load never ended, and the page stayed on its last figures, every later load dropped behind it.
const TIMEOUT_S = 60;

async function getJson(url) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_S * 1000);
  try {
    const response = await fetch(url, {
      headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE) },
      signal: abort.signal,
    });
    if (response.status === 401 || response.status === 403) throw await authError(response);
    // An error may not be the gateway's JSON (a proxy's HTML page): then its status says it.
    const body = await (response.ok ? response.json() : response.json().catch(() => ({})));
    if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    return body;
  } catch (error) {
    if (abort.signal.aborted) throw new Error(`no answer in ${TIMEOUT_S} s`);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

function api(name, extra = {}) {
  const params = new URLSearchParams({ range: $("range").value, ...extra });
  return getJson(`/admin/dashboard/${name}?${params}`);
}

// --- rendering ----------------------------------------------------------------------------

function setText(id, text, value) {
  const node = $(id);
  node.textContent = text;
  if (value !== undefined) node.dataset.value = value;
}

function renderSummary(s) {
  setText("kpi-spend", usd(s.spend_usd), s.spend_usd);
  setText("kpi-avg-cost", s.avg_cost_usd ? `${usd(s.avg_cost_usd)} per request` : "");
  setText("baseline-model", `(${s.baseline_model})`);
  setText("kpi-baseline", usd(s.baseline_usd), s.baseline_usd);
  setText("kpi-savings", usd(s.savings_usd), s.savings_usd);
  // Green for a saving, red for an overspend (traffic dearer than the baseline).
  const overspent = Number(s.savings_usd) < 0;
  $("kpi-savings").closest(".card").classList.toggle("good", !overspent);
  $("kpi-savings").closest(".card").classList.toggle("bad", overspent);
  // Negative savings (traffic dearer than the baseline) read as "more than", not "-x% less than".
  const p = s.savings_percent;
  setText("kpi-savings-pct", p === null ? ""
    : p < 0 ? `${(-p).toFixed(1)}% more than ${s.baseline_model}` : `${p.toFixed(1)}% less than ${s.baseline_model}`);
  setText("kpi-requests", int(s.requests), s.requests);
  setText("kpi-tokens", `${int(s.prompt_tokens)} tokens in · ${int(s.completion_tokens)} out`);
  setText("kpi-errors", pct(s.error_rate), s.errors);
  setText("kpi-reliability",
    `${int(s.errors)} errors · fallbacks ${pct(s.fallback_rate)} · retries ${pct(s.retry_rate)} · empty ${pct(s.empty_rate)}`);
  setText("kpi-cache", s.cache.lookups ? pct(s.cache.hit_rate + s.cache.semantic_hit_rate) : "no lookups");
  setText("kpi-cache-detail",
    `exact ${pct(s.cache.hit_rate)} · semantic ${pct(s.cache.semantic_hit_rate)} · saved ${usd(s.cache.saved_usd)}`);
}

function chart(id, config) {
  if (state.charts[id]) state.charts[id].destroy();
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
  state.charts[id] = new Chart($(id), config);
}

function renderSeries(series) {
  const labels = series.points.map((p) => bucketLabel(p.t, series.bucket_s));
  chart("chart-spend", {
    type: "line",
    data: {
      labels,
      datasets: [
        { label: "Spend (USD)", data: series.points.map((p) => Number(p.spend_usd)), borderColor: "#2f6fde", backgroundColor: "#2f6fde33", fill: true, tension: 0.2 },
        { label: "Baseline (USD)", data: series.points.map((p) => Number(p.baseline_usd)), borderColor: "#9aa3af", borderDash: [5, 4], tension: 0.2 },
        { label: "Saved (USD)", data: series.points.map((p) => Number(p.savings_usd)), borderColor: "#1a8a4a", tension: 0.2 },
      ],
    },
    options: { scales: { y: { beginAtZero: true } } },
  });
  chart("chart-requests", {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: "Answered", data: series.points.map((p) => p.requests - p.errors - p.client_errors - p.cache.hits - p.cache.semantic_hits), backgroundColor: "#2f6fde" },
        { label: "Cache hits", data: series.points.map((p) => p.cache.hits + p.cache.semantic_hits), backgroundColor: "#1a8a4a" },
        { label: "Refused (4xx)", data: series.points.map((p) => p.client_errors), backgroundColor: "#b7791f" },
        { label: "Errors (5xx)", data: series.points.map((p) => p.errors), backgroundColor: "#c62f2f" },
      ],
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
}

const moneyColumns = [
  { title: "Requests", key: "requests", value: (r) => int(r.requests), raw: (r) => r.requests },
  { title: "Spend", key: "spend", value: (r) => usd(r.spend_usd), raw: (r) => r.spend_usd },
  { title: "Baseline", key: "baseline", value: (r) => usd(r.baseline_usd), raw: (r) => r.baseline_usd },
  { title: "Saved", key: "savings", value: (r) => usd(r.savings_usd), raw: (r) => r.savings_usd },
  { title: "Avg / request", key: "avg_cost", value: (r) => usd(r.avg_cost_usd), raw: (r) => r.avg_cost_usd },
  { title: "Tokens in", key: "prompt_tokens", value: (r) => int(r.prompt_tokens) },
  { title: "Tokens out", key: "completion_tokens", value: (r) => int(r.completion_tokens) },
  { title: "Errors", key: "error_rate", value: (r) => pct(r.error_rate) },
];

function renderBreakdown(id, title, data) {
  fillTable($(id), [{ title, key: "group", value: (r) => r.label || r.group || "(none)", clip: true }, ...moneyColumns], data.rows, {
    group: (r) => r.group || "",
  });
  // Only the top spenders are asked for (keys: 20): a cut list says so, else it reads as every one.
  const cut = data.groups > data.rows.length;
  setText(id + "-note", cut ? `Top ${int(data.rows.length)} of ${int(data.groups)} ${title.toLowerCase()}s by spend` : "");
  $(id + "-note").hidden = !cut;
}

function renderModelChart(data) {
  const rows = data.rows.filter((r) => Number(r.spend_usd) > 0).slice(0, 8);
  chart("chart-models", {
    type: "doughnut",
    data: {
      labels: rows.map((r) => r.group || "(none)"),
      datasets: [{ label: "Spend (USD)", data: rows.map((r) => Number(r.spend_usd)),
        backgroundColor: ["#2f6fde", "#1a8a4a", "#b7791f", "#c62f2f", "#7c4dff", "#00a3a3", "#e67e22", "#9aa3af"] }],
    },
    options: { plugins: { title: { display: true, text: "Spend by model" }, legend: { position: "right" } } },
  });
}

const percentileColumns = [
  { title: "Requests", key: "count", value: (r) => int(r.count) },
  { title: "p50", key: "p50", value: (r) => ms(r.p50_ms), raw: (r) => r.p50_ms },
  { title: "p95", key: "p95", value: (r) => ms(r.p95_ms), raw: (r) => r.p95_ms },
  { title: "p99", key: "p99", value: (r) => ms(r.p99_ms), raw: (r) => r.p99_ms },
  { title: "TTFT p50", key: "ttft_p50", value: (r) => ms(r.ttft.p50_ms) },
  { title: "TTFT p95", key: "ttft_p95", value: (r) => ms(r.ttft.p95_ms) },
  { title: "TTFT p99", key: "ttft_p99", value: (r) => ms(r.ttft.p99_ms) },
];

function renderLatency(byRoute, byModel) {
  fillTable($("latency-route"), [{ title: "Route", key: "group", value: (r) => r.group || "(none)", clip: true }, ...percentileColumns], byRoute.rows, { group: (r) => r.group || "" });
  fillTable($("latency-model"), [{ title: "Model", key: "group", value: (r) => r.group || "(none)", clip: true }, ...percentileColumns], byModel.rows, { group: (r) => r.group || "" });
  setText("latency-note", byRoute.sample_every > 1
    ? `Percentiles over every ${byRoute.sample_every}th request of the range (a sample); 4xx refusals left out.`
    : "Percentiles over every request of the range; 4xx refusals left out.");
  const rows = byRoute.rows.slice(0, 10);
  chart("chart-latency", {
    type: "bar",
    data: {
      labels: rows.map((r) => r.group || "(none)"),
      datasets: [
        { label: "p50 ms", data: rows.map((r) => r.p50_ms), backgroundColor: "#2f6fde" },
        { label: "p95 ms", data: rows.map((r) => r.p95_ms), backgroundColor: "#b7791f" },
        { label: "p99 ms", data: rows.map((r) => r.p99_ms), backgroundColor: "#c62f2f" },
      ],
    },
    options: { plugins: { title: { display: true, text: "Latency by route" } }, scales: { y: { beginAtZero: true } } },
  });
}

function renderReliability(data, health) {
  fillTable($("reliability-provider"), [
    { title: "Provider", key: "group", value: (r) => r.group || "(none reached)", clip: true },
    { title: "Requests", key: "requests", value: (r) => int(r.requests) },
    { title: "Errors", key: "error_rate", value: (r) => pct(r.error_rate) },
    { title: "Fallbacks", key: "fallback_rate", value: (r) => pct(r.fallback_rate) },
    { title: "Retries", key: "retry_rate", value: (r) => pct(r.retry_rate) },
    { title: "Empty", key: "empty_rate", value: (r) => pct(r.empty_rate) },
  ], data.rows, { group: (r) => r.group || "" });
  fillTable($("failed-attempts"), [
    { title: "Provider", key: "provider", value: (r) => r.provider, clip: true },
    { title: "Model", key: "model", value: (r) => r.model, clip: true },
    { title: "Outcome", key: "outcome", value: (r) => r.outcome },
    { title: "Attempts", key: "attempts", value: (r) => int(r.attempts) },
  ], data.failed_attempts, { empty: "No failed upstream attempts in this range" });
  // With several workers (serve --workers N) each keeps breakers of its own: every worker's rows.
  const workers = health.by_worker || [health];
  const offers = workers.flatMap((w) => Object.entries(w.offers || {}).map(([offer, o]) => ({ offer, worker: w.worker, ...o })));
  fillTable($("health"), [
    { title: "Offer", key: "offer", value: (r) => r.offer, clip: true },
    ...(health.by_worker ? [{ title: "Worker", key: "worker", value: (r) => int(r.worker) }] : []),
    { title: "Breaker", key: "breaker", value: (r) => r.breaker.replace("_", "-"), cls: (r) => "state-" + r.breaker },
    { title: "Recent error rate", key: "error_rate", value: (r) => pct(100 * r.error_rate) },
    { title: "Times opened", key: "times_opened", value: (r) => int(r.times_opened) },
    { title: "p50", key: "p50", value: (r) => ms(r.latency_ms.p50) },
    { title: "p99", key: "p99", value: (r) => ms(r.latency_ms.p99) },
    { title: "TTFT p50", key: "ttft", value: (r) => ms(r.ttft_ms_p50) },
  ], offers, { empty: "No upstream calls since this process started" });
  const c = health.counters || {};
  // The counters of every worker, summed.
  const up = health.by_worker ? `${health.by_worker.length} of ${health.workers} workers up` : `Up ${Math.round(health.uptime_s || 0)} s`;
  setText("health-counters",
    `${up} · retries ${int(c.retries)} · fallbacks ${int(c.fallbacks)} · ` +
    `records written ${int(c.records_written)}, pending ${int(c.records_pending)}, dropped ${int(c.records_dropped)}`);
}

function renderFeedback(data) {
  fillTable($("feedback-model"), [
    { title: "Model", key: "group", value: (r) => r.group || "(none)", clip: true },
    { title: "Satisfaction", key: "satisfaction", value: (r) => pct(r.satisfaction), raw: (r) => r.satisfaction },
    { title: "Scores", key: "feedback", value: (r) => int(r.feedback) },
    { title: "Up", key: "thumbs_up", value: (r) => int(r.thumbs_up) },
    { title: "Down", key: "thumbs_down", value: (r) => int(r.thumbs_down) },
    { title: "Avg rating (1-5)", key: "avg_rating", value: (r) => (r.avg_rating === null ? "–" : r.avg_rating.toFixed(2)) },
    { title: "Requests", key: "requests", value: (r) => int(r.requests) },
    { title: "Spend", key: "spend", value: (r) => usd(r.spend_usd) },
    { title: "Avg / request", key: "avg_cost", value: (r) => usd(r.avg_cost_usd) },
  ], data.rows, { group: (r) => r.group || "", empty: "No feedback in this range (POST /v1/feedback)" });
}

function renderAlerts(data) {
  const banner = $("alerts-firing");
  banner.replaceChildren(...data.firing.map((a) => el("p", { "data-testid": "alert-firing" }, "Alert firing: " + a.message)));
  banner.hidden = data.firing.length === 0;
  // Events the webhook did not take (each tried three times): logged, and said here.
  const lost = data.webhook_failures || 0;
  setText("alerts-webhook", `The webhook did not take ${int(lost)} alert event${lost === 1 ? "" : "s"} ` +
    "since this process started (each tried three times; see the gateway's log).");
  $("alerts-webhook").hidden = lost === 0;
  const rows = [...data.firing, ...data.pending, ...data.recent.filter((e) => e.status === "resolved").slice(0, 20)];
  fillTable($("alerts-table"), [
    { title: "Status", key: "status", value: (r) => r.status, cls: (r) => (r.status === "firing" ? "status-err" : null) },
    { title: "Alert", key: "message", value: (r) => r.message, cls: () => "wrap" },
    // Firing or pending: since when (an ISO time in UTC); resolved: when it resolved (`at`, unix
    // seconds), not when it had fired. Written as every other time, in the browser's time zone.
    { title: "Since / resolved at", key: "since",
      value: (r) => when(r.status === "resolved" ? r.at : Date.parse(r.fired_at || r.pending_since) / 1000) },
  ], rows, { empty: data.rules.length ? "Nothing firing" : "No alert rules configured (alerts.rules in faregate.yaml)" });
  fillTable($("alert-rules"), [
    { title: "Rule", key: "name", value: (r) => r.name, clip: true },
    // With what narrows it (route, model, provider, key): two rules apart only there read alike without.
    { title: "Metric", key: "metric", value: (r) => [
      r.metric,
      ...["route", "model", "provider", "key"].filter((f) => r[f] !== null && r[f] !== undefined).map((f) => `${f} ${r[f]}`),
      ...(r.per ? [`per ${r.per}`] : []),
    ].join(", "), cls: () => "wrap" },
    { title: "Threshold", key: "threshold", value: (r) => (r.above !== null ? `above ${r.above}` : `below ${r.below}`) },
    // Spend counts since 00:00 UTC and a calibration's figures are its whole history: not a window.
    { title: "Measured over", key: "window", value: (r) => r.measured_over || `last ${r.window_minutes} min` },
    { title: "For", key: "for", value: (r) => `${r.for_minutes} min` },
  ], data.rules, { empty: "No rules" });
}

function quality() {
  return getJson("/admin/quality");
}

function renderQuality(data) {
  $("quality").hidden = data.routes.length === 0 && !data.cache;
  const share = (n) => (Number(n) * 100).toFixed(1) + "%";
  fillTable($("quality-cache"), [
    { title: "Bound (wrong hits / lookups)", key: "max_wrong_hit_rate", value: (c) => share(c.max_wrong_hit_rate) },
    { title: "Threshold in force", key: "threshold", raw: (c) => c.threshold,
      value: (c) => (c.threshold === null ? "none yet: no semantic hit" : c.threshold.toFixed(2)) },
    { title: "Wrong-hit bound", key: "wrong_hit_bound", value: (c) => share(c.wrong_hit_bound), raw: (c) => c.wrong_hit_bound,
      cls: (c) => (c.wrong_hit_bound > c.max_wrong_hit_rate && c.threshold !== null ? "status-err" : null) },
    { title: "Lookups", key: "lookups", value: (c) => int(c.lookups) },
    { title: "Served", key: "served", value: (c) => int(c.served) },
    { title: "Labelled (wrong)", key: "labelled", value: (c) => `${int(c.labelled)} (${int(c.wrong)})` },
    { title: "Verification cost", key: "verification_cost", value: (c) => usd(c.verification_cost_usd), raw: (c) => c.verification_cost_usd,
      cls: (c) => (c.cap_reached ? "status-err" : null) },
    { title: "Saved by cache hits, net of verification", key: "savings_net", value: (c) => usd(c.savings_net_usd), raw: (c) => c.savings_net_usd },
  ], data.cache ? [data.cache] : [], { empty: "Not calibrated (cache.semantic.max_wrong_hit_rate is not set)" });
  fillTable($("quality-routes"), [
    { title: "Route", key: "route", value: (r) => `${r.route} (${r.kind})`, clip: true },
    { title: "Target", key: "target", value: (r) => share(r.target), raw: (r) => r.target },
    { title: "Strong share", key: "strong_share", value: (r) => share(r.strong_share), raw: (r) => r.strong_share },
    { title: "Estimated quality", key: "estimated_quality", raw: (r) => r.estimated_quality,
      value: (r) => (r.verifications ? `${share(r.estimated_quality)} (${share(r.quality_interval[0])}–${share(r.quality_interval[1])})` : "–"),
      cls: (r) => (r.verifications && r.estimated_quality < r.target ? "status-err" : null) },
    { title: "Evidence", key: "evidence", value: (r) => Number(r.evidence).toPrecision(3) },
    { title: "Verifications", key: "verifications", raw: (r) => r.verifications,
      value: (r) => `${int(r.verifications)} (${int(r.by_label.free)} free, ${int(r.by_label.cheap)} cheap, ${int(r.by_label.paid)} paid)` },
    { title: "Verification cost", key: "verification_cost", value: (r) => usd(r.verification_cost_usd), raw: (r) => r.verification_cost_usd,
      cls: (r) => (r.cap_reached ? "status-err" : null) },
    { title: "Saved, net of verification", key: "savings_net", value: (r) => usd(r.savings_net_usd), raw: (r) => r.savings_net_usd },
    { title: "Health", key: "health", value: (r) => (r.flagged ? "flagged: " : "") + (r.health || "–") + (r.cap_reached ? " · daily cap reached" : ""),
      cls: (r) => (r.flagged ? "status-err wrap" : "wrap") },
    { title: "Ranking", key: "ranking", raw: (r) => r.ranking,
      value: (r) => `${r.ranking} (epoch ${int(r.epoch)})` + (r.learn_domains
        ? ` · challenger e-value ${Number(r.challenger_evidence).toPrecision(3)}, ${int(r.domain_examples)} examples`
        : "") },
  ], data.routes, { group: (r) => r.route });
}

// What went wrong, or what the call that served was sent without or instead of the client's.
function attemptDetail(a) {
  const sent = [];
  if (a.dropped_params) sent.push(`sent without ${a.dropped_params}`);
  if (a.adjusted_params) sent.push(`sent ${a.adjusted_params}`);
  if (a.detail) sent.push(a.detail);
  return sent.join("; ");
}

function attemptsRow(row) {
  const table = el("table");
  fillTable(table, [
    { title: "#", key: "n", value: (a) => a.n },
    { title: "Model", key: "model", value: (a) => a.model },
    { title: "Provider", key: "provider", value: (a) => a.provider },
    { title: "Outcome", key: "outcome", value: (a) => a.outcome + (a.status ? ` (HTTP ${a.status})` : "") },
    { title: "Latency", key: "latency", value: (a) => ms(a.latency_ms) },
    { title: "Cost", key: "cost", value: (a) => usd(a.cost_usd) },
    { title: "Detail", key: "detail", value: attemptDetail, cls: () => "wrap" },
  ], row.attempts.map((a, i) => ({ n: i + 1, ...a })), { empty: "No upstream attempt (answered from the cache, or refused)" });
  const detail = row.error ? el("p", { className: "error" }, row.error) : null;
  return el("tr", { className: "attempts" }, el("td", { colspan: 11 }, detail, table));
}

function renderRequests(data, append) {
  const table = $("requests");
  // A fixed layout: the columns share the panel's width whatever the names, and a long name is
  // cut to fit (whole in its tooltip), so cost and latency never leave the screen.
  const columns = [
    { title: "Time", key: "time", value: (r) => when(r.created_at), width: "11%" },
    { title: "Status", key: "status", value: (r) => r.status, cls: (r) => (r.status >= 500 ? "status-err" : null), width: "5%" },
    { title: "Route", key: "route", value: (r) => r.route || "–", width: "13%", clip: true },
    { title: "Model", key: "model", value: (r) => r.model_used || r.model_requested || "–", width: "13%", clip: true },
    { title: "Cost", key: "cost", value: (r) => usd(r.cost_usd), width: "8%" },
    { title: "Latency", key: "latency", value: (r) => ms(r.latency_ms) + (r.attempts.length > 1 ? ` · ${r.attempts.length} tries` : ""), width: "10%" },
    { title: "Tokens", key: "tokens", value: (r) => `${int(r.prompt_tokens)} / ${int(r.completion_tokens)}`, width: "8%" },
    { title: "Cache", key: "cache", value: (r) => r.cache_status, width: "7%", clip: true },
    { title: "Provider", key: "provider", value: (r) => r.provider || "–", width: "6%", clip: true },
    { title: "Key", key: "key", value: (r) => r.key || "–", width: "10%", clip: true },
    { title: "Request id", key: "request_id", value: (r) => r.request_id, width: "9%", clip: true },
  ];
  const toggle = (row, tr) => {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("attempts")) next.remove();
    else tr.after(attemptsRow(row));
  };
  if (!append) fillTable(table, columns, data.rows, { rowClass: "row", onClick: toggle, empty: "No requests match" });
  else {
    const scratch = el("table");
    fillTable(scratch, columns, data.rows, { rowClass: "row", onClick: toggle });
    table.querySelector("tbody").append(...scratch.querySelector("tbody").children);
  }
  $("requests-error").hidden = true;
  state.pages = append ? state.pages + 1 : 1;
  state.before = data.next_before;
  state.beforeId = data.next_before_id;
  $("more").hidden = data.next_before === null;
}

// Every fetch of a load, settled: a load ends only once all its requests have, so a panel that fails
// at once does not let the next load (a tick, Refresh) start while the slow ones still run, which
// piled a new set of queries on a struggling server at each. A refused key wins over other errors.
async function settled(fetches) {
  const results = await Promise.allSettled(fetches);
  const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failures.length) throw failures.find((e) => e instanceof AuthError) || failures[0];
  return results.map((r) => r.value);
}

// For a fetch whose failure one panel reports: any error but a refused key is returned, not thrown.
function keepAuthError(error) {
  if (error instanceof AuthError) throw error;
  return error instanceof Error ? error : new Error(String(error));
}

function requestsFailed(error) {
  if (error instanceof AuthError) return showLogin(error.message);
  $("requests-error").textContent = "Could not load the requests: " + error.message;
  $("requests-error").hidden = false;
}

// --- loading ------------------------------------------------------------------------------

// `asked`: the user asked (a new range, Refresh). Asked while a load is in flight, it runs once
// that load ends: dropped, the figures of the old range would stay under the new range's name.
// An auto-refresh tick during a load is dropped (the load in flight is as fresh).
async function load(asked = false) {
  if (state.loading) {
    if (asked) state.reload = true;
    return;
  }
  state.loading = true;
  state.reload = false;
  // An auto-refresh leaves the recent requests alone once the reader paged back or opened a row:
  // replacing them would put the list back to its first page, rows closed, while being read.
  const keepRequests = !asked && (state.pages > 1 || $("requests").querySelector("tr.attempts") !== null);
  const ticket = keepRequests ? null : ++state.list;
  try {
    const [summary, series, byModel, byProvider, byRoute, byWire, byKey, latRoute, latModel, reliability, health, feedback, alerts, requests, calibrated] =
      await settled([
        api("summary"), api("series"),
        api("breakdown", { by: "model" }), api("breakdown", { by: "provider" }),
        api("breakdown", { by: "route" }), api("breakdown", { by: "wire" }), api("breakdown", { by: "key", limit: 20 }),
        api("latency", { by: "route" }), api("latency", { by: "model" }),
        api("reliability", { by: "provider", limit: 12 }), api("health"), api("feedback", { by: "model" }),
        api("alerts"), keepRequests ? null : api("requests", { limit: PAGE, ...searchParams() }).catch(keepAuthError), quality(),
      ]);
    renderSummary(summary);
    renderSeries(series);
    renderBreakdown("by-model", "Model", byModel);
    renderModelChart(byModel);
    renderBreakdown("by-provider", "Provider", byProvider);
    renderBreakdown("by-route", "Route", byRoute);
    renderBreakdown("by-wire", "Wire", byWire);
    renderBreakdown("by-key", "Key", byKey);
    renderLatency(latRoute, latModel);
    renderReliability(reliability, health);
    renderFeedback(feedback);
    renderAlerts(alerts);
    renderQuality(calibrated);
    // A search that fails is said under the search box; the other panels still load.
    if (ticket !== state.list) {
      // A search (or a newer load) has replaced the list since: this answer is older.
    } else if (requests instanceof Error) requestsFailed(requests);
    else if (requests) renderRequests(requests, false);
    $("load-error").hidden = true;
    setText("updated", "Updated " + new Date().toLocaleTimeString("en-GB"));
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    if (error instanceof AuthError) return showLogin(error.message);
    $("load-error").textContent = "Could not load the dashboard: " + error.message;
    $("load-error").hidden = false;
  } finally {
    state.loading = false;
    if (state.reload && !$("app").hidden) load();
  }
}

// The search the rows shown answer (the box's text when Search was last pressed): paging back and
// auto-refresh keep to it, not to text typed in the box since.
function searchParams() {
  return state.query ? { q: state.query } : {};
}

// A hidden tab (another tab in front, a minimised window) is read by nobody: its auto-refresh
// waits, not running every panel's queries each tick all day; shown again, it loads at once.
function schedule() {
  clearInterval(state.timer);
  const seconds = Number($("refresh").value);
  if (seconds > 0 && !document.hidden) state.timer = setInterval(() => load(), seconds * 1000);
}

function visibilityChanged() {
  if ($("app").hidden) return; // signed out: nothing to refresh
  schedule();
  if (!document.hidden && Number($("refresh").value) > 0) load();
}

function showLogin(message) {
  clearInterval(state.timer);
  sessionStorage.removeItem(KEY_STORE);
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("master-key").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  schedule();
  load(true);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("master-key").value.trim());
    $("master-key").value = "";
    showApp();
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("range").addEventListener("change", () => load(true));
  $("refresh").addEventListener("change", schedule);
  document.addEventListener("visibilitychange", visibilityChanged);
  $("refresh-now").addEventListener("click", () => load(true));
  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.query = $("search").value.trim();
    const ticket = ++state.list;
    try {
      const data = await api("requests", { limit: PAGE, ...searchParams() });
      if (ticket === state.list) renderRequests(data, false);
    } catch (error) {
      if (ticket !== state.list) return;
      // The rows shown are not this search's results: cleared, and the error said where it was asked.
      $("requests").replaceChildren();
      $("more").hidden = true;
      state.pages = 0;
      requestsFailed(error);
    }
  });
  $("more").addEventListener("click", async () => {
    // Off until the page is in: a second click would ask for the same page and append it twice.
    $("more").disabled = true;
    const ticket = state.list; // continues the list shown: dropped if another replaced it meanwhile
    try {
      const data = await api("requests", { limit: PAGE, ...searchParams(), before: state.before, before_id: state.beforeId });
      if (ticket === state.list) renderRequests(data, true);
    } catch (error) { if (ticket === state.list) requestsFailed(error); } finally { $("more").disabled = false; }
  });
  if (sessionStorage.getItem(KEY_STORE)) showApp();
  else showLogin("");
});
