"use strict";
// The dashboard polls the JSON API of the worker that served it; any worker
// answers for the whole group. No libraries: the charts are plain SVG.

const POLL_MS = 1500;
const HISTORY_MS = 5 * 60 * 1000;
const MIN_SPAN_MS = 60 * 1000;
const RATE_WINDOW_MS = 6 * 1000;
const SESSION_LIMIT = 1000;
const CLOSE_REASONS = ["closed", "ttl_expired"];
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];
const SVG = "http://www.w3.org/2000/svg";

const view = {
  sortKey: "created_at", // newest first
  sortDir: -1,
  sessions: [],
  // Samples of the cumulative counters; rates are the differences between neighbours.
  history: [],
};

const $ = (id) => document.getElementById(id);

// Token figures pass 2^53 (a tenant's total over many sessions reaches 2^64),
// beyond what a JavaScript number holds exactly: such integers become BigInt,
// read from their own digits in the answer (JSON.parse source text access).
function parseExact(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)
      ? BigInt(context.source)
      : value);
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/"); // the sign-in cookie is gone: the page asks for the token
    throw new Error("signed out");
  }
  const body = await response.text().then(parseExact).catch(() => null);
  if (!response.ok) {
    throw new Error(body && body.detail ? body.detail : `${path}: HTTP ${response.status}`);
  }
  return body;
}

function sessionsPath(cursor, limit) {
  const params = new URLSearchParams({ limit: String(limit) });
  if ($("tenant-filter").value) params.set("tenant_id", $("tenant-filter").value);
  if ($("state-filter").value) params.set("state", $("state-filter").value);
  if (cursor) params.set("cursor", cursor);
  return "/sessions?" + params;
}

// A page reads a bounded number of sessions, so a sparse filter can answer
// short: read on a few pages, each as cheap as the first, to fill the view.
const SESSION_PAGES = 5;

async function getSessions() {
  let sessions = [];
  let cursor = null;
  for (let page = 0; page < SESSION_PAGES && sessions.length < SESSION_LIMIT; page++) {
    const body = await getJSON(sessionsPath(cursor, SESSION_LIMIT - sessions.length));
    sessions = sessions.concat(body.sessions);
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return { sessions, next_cursor: cursor };
}

async function refresh() {
  const [stats, tenants, sessions, ledger] = await Promise.allSettled([
    getJSON("/stats"), getJSON("/tenants?limit=1000"), getSessions(), getJSON("/ledger"),
  ]);
  const problems = [stats, tenants, sessions, ledger]
    .filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (stats.status === "fulfilled") renderStats(stats.value);
  if (ledger.status === "fulfilled") renderLedger(ledger.value);
  if (tenants.status === "fulfilled") renderTenants(tenants.value);
  if (sessions.status === "fulfilled") {
    view.sessions = sessions.value.sessions;
    $("sessions-note").textContent = sessions.value.next_cursor
      ? `showing the first ${view.sessions.length} by session id; narrow the filters to see the rest`
      : `${view.sessions.length} session${view.sessions.length === 1 ? "" : "s"}`;
    renderSessions();
  }
  const status = $("status");
  status.classList.toggle("error", problems.length > 0);
  status.textContent = problems.length
    ? `${[...new Set(problems)].join("; ")} (retrying)`
    : `updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  try {
    await refresh();
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// -- totals and charts ---------------------------------------------------------

function sum(counts) {
  return Object.values(counts).reduce((total, count) => total + BigInt(count), 0n);
}

function renderStats(stats) {
  $("total-live").textContent = stats.live_sessions.toLocaleString();
  $("total-applied").textContent = stats.applied.toLocaleString();
  $("total-duplicate").textContent = stats.duplicate.toLocaleString();
  $("total-rejected").textContent = stats.rejected_total.toLocaleString();
  $("total-closures").textContent = sum(stats.closures).toLocaleString();
  $("total-workers").textContent = stats.unreachable.length
    ? `${stats.workers.length} (+${stats.unreachable.length} not answering)`
    : String(stats.workers.length);

  const now = Date.now();
  view.history.push({ t: now, closures: stats.closures, rejected: stats.rejected });
  while (view.history.length > 2 && view.history[0].t < now - HISTORY_MS) view.history.shift();

  const rejectReasons = [...new Set(view.history.flatMap((s) => Object.keys(s.rejected)))].sort();
  drawChart($("closure-chart"), $("closure-legend"), rateSeries("closures", CLOSE_REASONS), now);
  drawChart($("rejection-chart"), $("rejection-legend"), rateSeries("rejected", rejectReasons), now);
}

// The ledger's card, shown when the worker knows the ledger's database.
function renderLedger(ledger) {
  $("ledger-card").hidden = !ledger.configured;
  if (!ledger.configured) return;
  const value = $("ledger-lag");
  if (ledger.lag_records === null) {
    value.textContent = "unknown";
    value.title = ledger.error || "";
  } else {
    value.textContent = ledger.caught_up ? "caught up" : `${ledger.lag_records.toLocaleString()} behind`;
    value.title = "";
  }
}

function rateSeries(field, names) {
  return names.map((name) => {
    const points = [];
    let start = 0;
    for (let i = 1; i < view.history.length; i++) {
      const after = view.history[i];
      // Rates over a few seconds: the counters move in batches, one poll apart is jagged.
      while (start < i - 1 && view.history[start].t < after.t - RATE_WINDOW_MS) start++;
      const before = view.history[start];
      const seconds = (after.t - before.t) / 1000;
      // A worker restart resets its counters; a drop is not a negative rate.
      const delta = Math.max(0, Number(after[field][name] || 0) - Number(before[field][name] || 0));
      points.push([after.t, seconds > 0 ? delta / seconds : 0]);
    }
    return { name, points };
  });
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * magnitude).find((candidate) => candidate >= value);
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawChart(svg, legend, series, now) {
  const width = svg.clientWidth || 600;
  const height = svg.clientHeight || 180;
  const left = 44, right = 8, top = 10, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const peak = niceCeiling(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  // The time axis grows with the history, from one minute up to HISTORY_MS.
  const span = Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, now - view.history[0].t));
  const x = (t) => left + ((t - (now - span)) / span) * (width - left - right);
  const y = (rate) => top + (1 - rate / peak) * (height - top - bottom);

  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const level = peak * fraction;
    parts.push(svgElement("line", { class: "axis", x1: left, x2: width - right, y1: y(level), y2: y(level) }));
    parts.push(svgElement("text", { class: "axis-label", x: left - 6, y: y(level) + 4, "text-anchor": "end" },
      `${+level.toFixed(2)}/s`));
  }
  parts.push(svgElement("text", { class: "axis-label", x: left, y: height - 5 },
    `${formatDuration(Math.round(span / 1000))} ago`));
  parts.push(svgElement("text", { class: "axis-label", x: width - right, y: height - 5, "text-anchor": "end" }, "now"));
  series.forEach((s, index) => {
    if (s.points.length === 0) return;
    const points = s.points.map(([t, rate]) => `${x(t).toFixed(1)},${y(rate).toFixed(1)}`).join(" ");
    parts.push(svgElement("polyline", { points, stroke: COLORS[index % COLORS.length] }));
  });
  svg.replaceChildren(...parts);

  legend.replaceChildren(...series.map((s, index) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLORS[index % COLORS.length];
    const latest = s.points.length ? s.points[s.points.length - 1][1] : 0;
    item.append(swatch, `${s.name} ${latest.toFixed(2)}/s`);
    return item;
  }));
  if (series.length === 0) legend.textContent = "none so far";
}

// -- tenants ----------------------------------------------------------------

function renderTenants(page) {
  const selected = $("tenant-filter").value;
  const rows = page.tenants.map((usage) => {
    const row = document.createElement("tr");
    row.dataset.tenantId = usage.tenant_id;
    row.classList.toggle("selected", usage.tenant_id === selected);
    const cells = [
      [usage.tenant_id, "id", "tenant_id"],
      [usage.live_sessions, "num", "live_sessions"],
      [usage.live_token_count, "num", "live_token_count"],
      [usage.usage_tokens, "num", "usage_tokens"],
      [usage.budget ? usage.budget.limit_tokens : "–", usage.budget ? "num" : "id", "limit_tokens"],
      [usage.state, "id", "state"],
      [usage.closures.closed, "num", "closures_closed"],
      [usage.closures.ttl_expired, "num", "closures_ttl_expired"],
    ];
    row.append(...cells.map(([value, kind, name]) => {
      const td = cell(kind === "num" ? value.toLocaleString() : value, kind);
      td.dataset.col = name;
      return td;
    }));
    row.addEventListener("click", () => {
      $("tenant-filter").value = usage.tenant_id === selected ? "" : usage.tenant_id;
      refresh();
    });
    return row;
  });
  $("tenants").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(8, "no tenants in the table")]));
  if (page.tenants.length) $("period").textContent = page.tenants[0].period;

  // Keep the chosen tenant in the list even when its records are gone.
  const names = new Set(page.tenants.map((usage) => usage.tenant_id));
  if (selected) names.add(selected);
  const filter = $("tenant-filter");
  const options = [new Option("all", "")].concat([...names].sort().map((name) => new Option(name, name)));
  filter.replaceChildren(...options);
  filter.value = selected;
}

// -- sessions ---------------------------------------------------------------

// Timestamps sort as times: as text "…:40Z" would come after "…:40.5Z".
function sortValue(session, key) {
  const value = session[key];
  return key.endsWith("_at") && value !== null ? Date.parse(value) : value;
}

function compareBy(key, direction) {
  return (a, b) => {
    const left = sortValue(a, key), right = sortValue(b, key);
    if (left === right) return 0;
    if (left === null) return 1; // absent times last, whichever the direction
    if (right === null) return -1;
    // Numbers and BigInts compare with each other exactly; subtraction would not mix them.
    const numeric = typeof left === "number" || typeof left === "bigint";
    const order = numeric ? (left < right ? -1 : left > right ? 1 : 0) : String(left).localeCompare(String(right));
    return order * direction;
  };
}

function renderSessions() {
  const rows = [...view.sessions].sort(compareBy(view.sortKey, view.sortDir)).map((session) => {
    const row = document.createElement("tr");
    row.dataset.sessionId = session.session_id;
    const state = document.createElement("span");
    state.className = `state state-${session.state}`;
    state.textContent = session.state;
    row.append(
      cell(session.session_id, "id"),
      cell(session.tenant_id, "id"),
      cell(session.provider_id),
      cell(session.model),
      cell(state, "state"),
      cell(session.round_count.toLocaleString(), "num"),
      cell(session.total_token_count.toLocaleString(), "num"),
      cell(formatTime(session.created_at)),
      cell(session.state === "closed" ? formatTime(session.expires_at) : untilExpiry(session.expires_at)),
      cell(formatTime(session.closed_at)),
    );
    for (const [index, name] of ["session_id", "tenant_id", "provider_id", "model", "state", "round_count",
      "total_token_count", "created_at", "expires_at", "closed_at"].entries()) {
      row.cells[index].dataset.col = name;
    }
    return row;
  });
  $("sessions").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(10, "no sessions match")]));
}

function cell(content, kind) {
  const td = document.createElement("td");
  if (kind === "num" || kind === "id") td.className = kind;
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "";
  if (kind === "id") td.title = content;
  return td;
}

function emptyRow(columns, message) {
  const row = document.createElement("tr");
  const td = cell(message);
  td.colSpan = columns;
  td.className = "empty";
  row.append(td);
  return row;
}

function formatTime(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleTimeString() : "";
}

function untilExpiry(timestamp) {
  const seconds = Math.round((new Date(timestamp) - Date.now()) / 1000);
  return seconds >= 0 ? `in ${formatDuration(seconds)}` : `${formatDuration(-seconds)} overdue`;
}

function formatDuration(seconds) {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function setUpSorting() {
  for (const header of $("sessions").tHead.rows[0].cells) {
    header.addEventListener("click", () => {
      const key = header.dataset.key;
      view.sortDir = key === view.sortKey ? -view.sortDir : 1;
      view.sortKey = key;
      for (const other of header.parentElement.cells) other.removeAttribute("aria-sort");
      header.setAttribute("aria-sort", view.sortDir > 0 ? "ascending" : "descending");
      renderSessions();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpSorting();
  $("tenant-filter").addEventListener("change", refresh);
  $("state-filter").addEventListener("change", refresh);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  poll();
});
