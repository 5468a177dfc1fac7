// The Rampart web console: plain JavaScript over the admin API (/api/), nothing fetched
// from anywhere else. The session cookie is HttpOnly; its CSRF token is kept for this tab.
"use strict";

const $ = (sel) => document.querySelector(sel);
let csrf = sessionStorage.getItem("rampart-csrf") || "";
let timer = null;

function say(text, isError) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = csrf;
  }
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const doc = await res.json().catch(() => ({}));
  if (res.status === 401 && path !== "/api/login") { showLogin(); }
  if (!res.ok) {
    throw new Error((doc.error && doc.error.message) || `${res.status} ${res.statusText}`);
  }
  return doc;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(table, rows) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren();
  for (const values of rows) {
    const tr = document.createElement("tr");
    for (const v of values) cell(tr, v);
    body.appendChild(tr);
  }
}

function age(seconds) {
  if (seconds === undefined || seconds === null) return "";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function showLogin() {
  clearInterval(timer);
  $("#nav").hidden = true; $("#who").hidden = true;
  document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
  $("#login").hidden = false;
}

async function showPage(name) {
  $("#login").hidden = true; $("#nav").hidden = false; $("#who").hidden = false;
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== name; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  clearInterval(timer);
  say("");
  try {
    await LOADERS[name]();
    if (name === "dashboard" || name === "logs") {
      timer = setInterval(() => LOADERS[name]().catch(() => {}), 3000);  // live, as it happens
    }
  } catch (e) { say(e.message, true); }
}

const rate = { last: null, points: [] };  // (time, total items) samples for the chart

function drawRate(total) {
  const now = Date.now() / 1000;
  if (rate.last) {
    const dt = now - rate.last[0];
    if (dt > 0) rate.points.push(Math.max(0, (total - rate.last[1]) / dt));
    if (rate.points.length > 60) rate.points.shift();
  }
  rate.last = [now, total];
  const max = Math.max(1, ...rate.points);
  const svg = $("#d-rate");
  svg.replaceChildren();
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", rate.points.map((v, i) => `${(i * 600) / 59},${78 - (v / max) * 74}`).join(" "));
  svg.appendChild(line);
  const cur = rate.points.length ? rate.points[rate.points.length - 1] : 0;
  $("#d-rate-now").textContent = `${cur.toFixed(1)} queries/s now, peak ${max.toFixed(1)} over the last ${rate.points.length * 3} s`;
}

function fillList(sel, pairs) {
  const ol = $(sel);
  ol.replaceChildren();
  for (const [value, n] of pairs) {
    const li = document.createElement("li");
    li.textContent = `${value} (${n})`;
    ol.appendChild(li);
  }
  if (!pairs.length) ol.textContent = "nothing blocked";
}

async function loadDashboard() {
  const s = await api("GET", "/api/status");
  api("GET", "/api/logs/top?hours=24").then((top) => {
    fillList("#d-top-items", top.items); fillList("#d-top-threats", top.threats);
  }).catch(() => { fillList("#d-top-items", []); fillList("#d-top-threats", []); });
  const p = s.pattern || {};
  const status = $("#d-status");
  status.textContent = s.status === "ready" ? "Protecting" : "Patterns stale";
  status.className = "big " + (s.status === "ready" ? "ok" : "stale");
  $("#d-pattern").textContent = `pattern ${p.version || "?"}, ${age(p.age_seconds)} old`;
  const items = Object.entries(s.items || {});
  const total = items.reduce((n, [, v]) => n + v, 0);
  const local = items.filter(([k]) => /\/(pattern|blocked-list|approved-list|cache|local)$/.test(k))
    .reduce((n, [, v]) => n + v, 0);
  $("#d-total").textContent = String(total);
  drawRate(total);
  $("#d-local").textContent = total ? `${Math.round(100 * local / total)} % answered here` : "no queries yet";
  $("#d-cache").textContent = String((s.cache || {}).entries || 0);
  const cloud = $("#d-cloud");
  cloud.replaceChildren();
  for (const e of s.cloud || []) {
    const li = document.createElement("li");
    li.textContent = `${e.url}: ${e.state || e.circuit || "?"}`;
    cloud.appendChild(li);
  }
  if (!(s.cloud || []).length) cloud.textContent = "none configured";
  fill("#d-items", items.map(([k, v]) => [...k.split("/"), v]));
  const pats = p.patterns || {};
  fill("#d-patterns", Object.entries(pats).map(([name, q]) => [name, q.version, age(q.age_seconds), q.stale ? "stale" : "yes"]));
}

async function loadLists() {
  const doc = await api("GET", "/api/lists");
  const body = $("#l-entries tbody");
  body.replaceChildren();
  for (const e of doc.entries) {
    const tr = document.createElement("tr");
    cell(tr, e.list); cell(tr, e.kind); cell(tr, e.value, "value"); cell(tr, e.note);
    cell(tr, new Date(e.created * 1000).toLocaleString());
    const b = document.createElement("button");
    b.type = "button"; b.className = "secondary"; b.textContent = "Remove";
    b.addEventListener("click", async () => {
      try { await api("POST", "/api/lists/remove", { values: [e.value], list: e.list });
        say(`removed ${e.value}`); await loadLists(); } catch (err) { say(err.message, true); }
    });
    cell(tr, "").appendChild(b);
    body.appendChild(tr);
  }
}

async function loadUpdates() {
  const s = await api("GET", "/api/status");
  const p = s.pattern || {};
  const up = p.update;
  $("#u-source").textContent = up ? `update source ${up.source || ""}` : "no update source configured";
  fill("#u-versions", (p.versions || []).map((v) => [v === p.stored ? `${v} (current)` : v]));
}

async function loadCertificates() {
  const s = await api("GET", "/api/status");
  const c = s.certificates || {};
  fill("#c-table", (c.expiry || []).map((e) => [e.cert === "ca" ? "appliance CA" : e.cert,
    new Date(e.not_after).toLocaleDateString(), e.days_left]));
  const warn = $("#c-warnings");
  warn.replaceChildren();
  for (const w of c.warnings || []) {
    const li = document.createElement("li");
    li.textContent = w;
    warn.appendChild(li);
  }
}

function logQuery() {
  const f = new FormData($("#log-form"));
  const q = new URLSearchParams({ log: f.get("log"), limit: "100" });
  if (f.get("text")) q.set("text", f.get("text"));
  if (f.get("regex")) q.set("regex", f.get("regex"));
  return q;
}

async function loadLogs() {
  const q = logQuery();
  const doc = await api("GET", `/api/logs?${q}`);
  for (const [id, fmt] of [["#log-csv", "csv"], ["#log-json", "json"]]) {
    const e = new URLSearchParams(q); e.delete("limit"); e.set("format", fmt);
    $(id).href = `/api/logs/export?${e}`;
  }
  const rows = doc.rows || [];
  const first = ["time", "actor", "client", "service", "item", "verdict", "source", "matched", "threat",
    "action", "version", "endpoint", "latency_ms"];
  const keys = rows.length ? Object.keys(rows[0]).filter((c) => !["id", "origin", "blocked", "count"].includes(c)) : [];
  const cols = [...first.filter((c) => keys.includes(c)), ...keys.filter((c) => !first.includes(c))];
  const head = $("#log-table thead tr");
  head.replaceChildren();
  for (const c of cols) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  fill("#log-table", rows.map((r) => cols.map((c) => (c === "time" ? new Date(r[c]).toLocaleString() : r[c]))));
  if (!rows.length) say("nothing logged that matches");
}

async function loadAccounts() {
  let doc;
  try { doc = await api("GET", "/api/accounts"); } catch (e) { $("#a-manage").hidden = true; return; }
  $("#a-manage").hidden = false;
  const when = (t) => (t ? new Date(t).toLocaleString() : "");
  fill("#a-users", doc.users.map((u) => [u.name, u.role, when(u.created)]));
  fill("#a-keys", doc.keys.map((k) => [k.name, k.role, k.created_by, k.expires ? when(k.expires) : "never",
    k.last_used ? when(k.last_used) : "never"]));
}

const LOADERS = { dashboard: loadDashboard, lists: loadLists, logs: loadLogs, updates: loadUpdates,
  certificates: loadCertificates, accounts: loadAccounts };

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const doc = await api("POST", "/api/login", { user: f.get("user"), password: f.get("password") });
      csrf = doc.csrf; sessionStorage.setItem("rampart-csrf", csrf);
      $("#who-name").textContent = `${doc.user} (${doc.role})`;
      say("");
      location.hash = "#dashboard"; showPage("dashboard");
    } catch (e) { say(e.message, true); }
  });
  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (e) { /* gone already */ }
    sessionStorage.removeItem("rampart-csrf"); csrf = ""; say("logged out"); showLogin();
  });
  $("#add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const doc = await api("POST", "/api/lists", { list: f.get("list"), values: [f.get("value")], note: f.get("note") || "" });
      say(doc.messages.join("; ")); ev.target.reset(); await loadLists();
    } catch (e) { say(e.message, true); }
  });
  $("#test-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const doc = await api("POST", "/api/lists/test", { url: new FormData(ev.target).get("url") });
      $("#test-result").textContent = doc.lines.join("\n");
    } catch (e) { say(e.message, true); }
  });
  $("#update-now").addEventListener("click", async () => {
    try { const r = await api("POST", "/api/updates/now", {}); $("#u-result").textContent = JSON.stringify(r, null, 1); }
    catch (e) { say(e.message, true); }
  });
  $("#rollback").addEventListener("click", async () => {
    try { const r = await api("POST", "/api/updates/rollback", {}); say(`rolled back from ${r.from} to ${r.to}`); await loadUpdates(); }
    catch (e) { say(e.message, true); }
  });
  $("#log-form").addEventListener("submit", async (ev) => {
    ev.preventDefault(); say("");
    try { await loadLogs(); } catch (e) { say(e.message, true); }
  });
  $("#password-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await api("POST", "/api/accounts/password", { password: new FormData(ev.target).get("password") });
      ev.target.reset(); say("password changed"); } catch (e) { say(e.message, true); }
  });
  $("#user-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try { await api("POST", "/api/accounts/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") });
      ev.target.reset(); say(`added ${f.get("name")}`); await loadAccounts(); } catch (e) { say(e.message, true); }
  });
  $("#key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const body = { name: f.get("name"), role: f.get("role") };
    if (f.get("days")) body.expires_days = Number(f.get("days"));
    try { const r = await api("POST", "/api/accounts/keys", body);
      $("#a-new-key").textContent = `${r.key}\n(shown once: store it now)`; ev.target.reset(); await loadAccounts();
    } catch (e) { say(e.message, true); }
  });
  window.addEventListener("hashchange", () => showPage(location.hash.slice(1) || "dashboard"));
  api("GET", "/api/session").then((doc) => {
    if (doc.csrf) { csrf = doc.csrf; sessionStorage.setItem("rampart-csrf", csrf); }
    $("#who-name").textContent = `${doc.user} (${doc.role})`;
    showPage(location.hash.slice(1) in LOADERS ? location.hash.slice(1) : "dashboard");
  }).catch(() => showLogin());
});
