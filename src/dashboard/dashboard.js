// The dashboard: reads the admin API with the admin token and draws it. Every value from a
// record (ids, models, provider messages) goes into the page as text, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
let token = null;
let timer = null;

// The page's state lives in the URL's fragment (never sent to a server): `window=1h`,
// `request=ID`, and once `token=…`, which is moved to sessionStorage and taken out of the URL.
function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function setHash(params) {
  const s = params.toString();
  history.replaceState(null, "", s ? "#" + s : location.pathname);
}

function readToken() {
  const p = hashParams();
  if (p.has("token")) {
    sessionStorage.setItem("detour-admin-token", p.get("token"));
    p.delete("token");
    setHash(p);
  }
  return sessionStorage.getItem("detour-admin-token");
}

class Unauthorized extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  const body = await r.json();
  if (r.status === 401) throw new Unauthorized("the admin token was refused");
  // 403: the admin API is off (no token configured); the gateway says how to turn it on.
  if (r.status === 403) throw new Unauthorized((body.error && body.error.message) || "HTTP 403");
  if (!r.ok) throw new Error((body.error && body.error.message) || "HTTP " + r.status);
  return body;
}

// Formats: the page shows these; `data-value` keeps the API's number as it came.
const fmt = {
  count: (v) => (v === null || v === undefined ? "—" : String(v)),
  rate: (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"),
  ratio: (v) => (v === null || v === undefined ? "—" : v.toFixed(2)),
  ms: (v) => (v === null || v === undefined ? "—" : v.toFixed(1) + " ms"),
  usd: (v) => (v === null || v === undefined ? "—" : "$" + v.toFixed(6)),
  time: (ms) => new Date(ms).toLocaleTimeString(),
};

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function cell(text, cls, attrs) {
  const td = el("td", text, attrs);
  if (cls) td.className = cls;
  return td;
}

function numCell(key, value, kind) {
  return cell(fmt[kind](value), "n", { "data-cell": key, "data-value": JSON.stringify(value) });
}

function setNum(id, value, kind) {
  const e = $(id);
  e.textContent = fmt[kind](value);
  e.setAttribute("data-value", JSON.stringify(value));
}

function drawTotals(t) {
  setNum("total-requests", t.requests, "count");
  setNum("total-success_rate", t.success_rate, "rate");
  setNum("total-fallback_rate", t.fallback_rate, "rate");
  setNum("total-attempts_per_request", t.attempts_per_request, "ratio");
  setNum("total-p50", t.latency_ms.p50, "ms");
  setNum("total-p95", t.latency_ms.p95, "ms");
  setNum("total-p99", t.latency_ms.p99, "ms");
}

function drawRoutes(routes) {
  const rows = routes.map((r) => {
    const k = r.provider + "|" + r.model + "|";
    const tr = el("tr", null, { "data-route": r.provider + "|" + r.model });
    const failures = Object.entries(r.failures).map(([c, n]) => c + " " + n).join(", ");
    tr.append(
      cell(r.provider),
      cell(r.model),
      cell(r.circuit || "—", r.circuit ? "state-" + r.circuit : "muted", {
        "data-cell": k + "circuit",
        title: r.circuit ? "" : "no breaker state: it has not failed yet",
      }),
      numCell(k + "requests", r.requests, "count"),
      numCell(k + "attempts", r.attempts, "count"),
      numCell(k + "success_rate", r.success_rate, "rate"),
      numCell(k + "fallback_rate", r.fallback_rate, "rate"),
      numCell(k + "attempts_per_request", r.attempts_per_request, "ratio"),
      cell(failures || "—", failures ? "bad" : "muted", { "data-cell": k + "failures" }),
      numCell(k + "p50", r.latency_ms.p50, "ms"),
      numCell(k + "p95", r.latency_ms.p95, "ms"),
      numCell(k + "p99", r.latency_ms.p99, "ms"),
      numCell(k + "ttft_p50", r.ttft_ms.p50, "ms"),
      numCell(k + "ttft_p95", r.ttft_ms.p95, "ms"),
    );
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(14, "no requests in this window"));
  $("routes").replaceChildren(...rows);
}

function emptyRow(span, text) {
  const tr = el("tr");
  tr.append(cell(text, "muted", { colspan: String(span) }));
  return tr;
}

function drawBreakers(breakers, budget) {
  const rows = breakers.map((b) => {
    const tr = el("tr", null, { "data-breaker": b.provider + "|" + b.model });
    tr.append(
      cell(b.provider),
      cell(b.model),
      cell(b.state, "state-" + b.state),
      cell(b.consecutive_failures, "n"),
      cell(b.window_failures + " / " + b.window_requests, "n"),
      cell(b.open_for_ms == null ? "—" : (b.open_for_ms / 1000).toFixed(1) + " s", "n"),
      cell(b.times_opened, "n"),
    );
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(7, "no target has been tried yet"));
  $("breakers").replaceChildren(...rows);
  $("budget").textContent =
    budget.extra_attempts + " extra attempts of " + budget.allowed + " allowed, over " +
    budget.requests + " requests in its window";
}

function attemptsSummary(r) {
  return r.attempts
    .filter((a) => a.outcome !== "skipped")
    .map((a) => a.provider + " " + a.outcome)
    .join(" → ");
}

function requestLink(id) {
  const a = el("a", id, { href: "#" });
  a.addEventListener("click", (e) => {
    e.preventDefault();
    const p = hashParams();
    p.set("request", id);
    setHash(p);
    showDetail().catch(fail);
  });
  return a;
}

function drawRecent(failed, fellBack) {
  const seen = new Set();
  const all = failed.data.concat(fellBack.data)
    .sort((a, b) => b.seq - a.seq)
    .filter((r) => !seen.has(r.seq) && seen.add(r.seq))
    .slice(0, 25);
  const rows = all.map((r) => {
    const tr = el("tr", null, { "data-request": r.id });
    const id = cell(null);
    id.append(requestLink(r.id));
    tr.append(
      cell(fmt.time(r.at)),
      id,
      cell(r.model || r.mode),
      cell(r.outcome, r.outcome.startsWith("success") ? "ok" : "bad"),
      cell(r.status, "n"),
      cell(attemptsSummary(r), "err"),
      cell(fmt.ms(r.ms), "n"),
    );
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(7, "none on record"));
  $("recent").replaceChildren(...rows);
}

async function showDetail() {
  const id = hashParams().get("request");
  if (!id) {
    $("detail").hidden = true;
    return;
  }
  const r = await api("/admin/requests/" + encodeURIComponent(id));
  $("detail-id").textContent = r.id;
  const facts = [
    ["ended", new Date(r.at).toLocaleString()], ["gateway key", r.key || "—"], ["mode", r.mode],
    ["model", r.model || "—"], ["stream", r.stream ? "yes" : "no"], ["outcome", r.outcome],
    ["status", r.status], ["served by", r.served_by || "—"], ["fallback", r.fallback ? "yes" : "no"],
    ["tokens", fmt.count(r.prompt_tokens) + " in, " + fmt.count(r.completion_tokens) + " out"],
    ["cost", fmt.usd(r.cost_usd)], ["total", fmt.ms(r.ms)],
    ["client left", r.client_closed ? "yes" : "no"], ["error after commit", r.post_commit_error || "—"],
  ];
  $("detail-summary").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  const rows = r.attempts.map((a, i) => {
    const tr = el("tr", null, { "data-attempt": String(i) });
    const waited = a.waited_ms == null ? "—" : fmt.ms(a.waited_ms) + " (" + a.wait_reason + ")";
    tr.append(
      cell(i + 1, "n"), cell(a.provider), cell(a.source), cell(a.pay || "—"),
      cell(a.outcome + (a.retry ? " (retry)" : ""), a.outcome === "success" ? "ok" : "bad"),
      cell(fmt.count(a.status), "n"), cell(waited, "n"), cell(fmt.ms(a.connect_ms), "n"),
      cell(fmt.ms(a.first_byte_ms), "n"), cell(fmt.ms(a.first_token_ms), "n"),
      cell(fmt.ms(a.ms), "n"), cell(fmt.usd(a.cost_usd), "n"), cell(a.error || "", "err"),
    );
    return tr;
  });
  $("detail-attempts").replaceChildren(...rows);
  $("detail").hidden = false;
}

async function refresh() {
  clearTimeout(timer);
  const win = $("window").value;
  const [stats, failed, fellBack] = await Promise.all([
    api("/admin/stats?window=" + win),
    api("/admin/requests?failed=true&limit=25"),
    api("/admin/requests?fallback=true&limit=25"),
  ]);
  drawTotals(stats.totals);
  drawRoutes(stats.routes);
  drawBreakers(stats.breakers, stats.retry_budget);
  drawRecent(failed, fellBack);
  await showDetail();
  $("status").textContent = "updated " + new Date().toLocaleTimeString() + " · every 5 s";
  $("status").className = "muted";
  $("main").hidden = false;
  $("login").hidden = true;
  document.body.dataset.state = "ready";
  timer = setTimeout(() => refresh().catch(fail), REFRESH_MS);
}

function showLogin(message) {
  clearTimeout(timer);
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  document.body.dataset.state = "login";
}

function fail(e) {
  if (e instanceof Unauthorized) {
    sessionStorage.removeItem("detour-admin-token");
    token = null;
    showLogin(e.message);
    return;
  }
  // Keep the last good numbers and say what went wrong; try again at the next tick.
  $("status").textContent = "not updated: " + e.message;
  $("status").className = "bad";
  document.body.dataset.state = "error";
  clearTimeout(timer);
  timer = setTimeout(() => refresh().catch(fail), REFRESH_MS);
}

function start() {
  const p = hashParams();
  if (["5m", "1h", "24h"].includes(p.get("window"))) $("window").value = p.get("window");
  $("window").addEventListener("change", () => {
    const q = hashParams();
    q.set("window", $("window").value);
    setHash(q);
    refresh().catch(fail);
  });
  $("detail-close").addEventListener("click", (e) => {
    e.preventDefault();
    const q = hashParams();
    q.delete("request");
    setHash(q);
    $("detail").hidden = true;
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem("detour-admin-token");
    token = null;
    showLogin("");
  });
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("detour-admin-token", token);
    $("token").value = "";
    refresh().catch(fail);
  });
  token = readToken();
  if (token) refresh().catch(fail);
  else showLogin("");
}

start();
