// The dashboard: is it protecting, how busy, where answers come from, the cloud's health,
// what was blocked today, how fresh the patterns are. Rates are computed here from
// successive /api/status counters ("service/source" -> items so far).
"use strict";

import { $, age, api, el, fill, fillRanked } from "./core.js";
import { lineChart, shareBar } from "./charts.js";

export const REFRESH_SECONDS = 3;
const SLOTS = 60;
const LOCAL = ["blocked-list", "approved-list", "pattern", "local"];
const SOURCES = [...LOCAL, "cache", "cloud", "degraded"];
const history = { last: null, ticks: 0, service: {}, source: {} };

function push(group, name, value, length) {
  const s = group[name] || (group[name] = new Array(Math.max(0, length - 1)).fill(0));
  s.push(value);
  if (s.length > SLOTS) s.shift();
}

/** One sample of the counters: per-service and per-source rates since the last one. */
function sample(items) {
  const now = Date.now() / 1000;
  const last = history.last;
  history.last = { t: now, items };
  if (!last || now - last.t <= 0) return;
  const dt = now - last.t;
  const bySvc = {}, bySrc = {};
  for (const [key, n] of Object.entries(items)) {
    const [svc, src] = key.split("/");
    const d = Math.max(0, n - (last.items[key] || 0)) / dt;
    bySvc[svc] = (bySvc[svc] || 0) + d;
    bySrc[src] = (bySrc[src] || 0) + d;
  }
  history.ticks += 1;
  const len = Math.min(SLOTS, history.ticks);
  for (const [group, now_] of [[history.service, bySvc], [history.source, bySrc]]) {
    for (const name of new Set([...Object.keys(group), ...Object.keys(now_)])) {
      push(group, name, now_[name] || 0, len);
    }
  }
}

function sorted(group, order) {
  const names = Object.keys(group).sort((a, b) => {
    const ia = order.indexOf(a), ib = order.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return Object.fromEntries(names.map((n) => [n, group[n]]));
}

function protection(s) {
  const p = s.pattern || {};
  const st = $("#d-status");
  st.textContent = s.status === "ready" ? "Protecting" : "Patterns stale";
  st.className = `big ${s.status === "ready" ? "ok" : "bad"}`;
  $("#d-pattern").textContent = `pattern ${p.version || "?"}, ${age(p.age_seconds)} old`
    + (p.sample ? " (the bundled sample: no update installed yet)" : "");
}

function answered(items) {
  const bySrc = {};
  for (const [key, n] of Object.entries(items)) {
    const src = key.split("/")[1];
    bySrc[src] = (bySrc[src] || 0) + n;
  }
  const total = Object.values(bySrc).reduce((a, b) => a + b, 0);
  const local = LOCAL.reduce((n, k) => n + (bySrc[k] || 0), 0);
  $("#d-total").textContent = String(total);
  $("#d-local").textContent = total ? `${Math.round((100 * local) / total)} %` : "–";
  $("#d-local-note").textContent = total
    ? `${local} of ${total} items answered here, ${total - local} by the cloud or its cache`
    : "no queries yet";
  const names = [...SOURCES, ...Object.keys(bySrc).filter((k) => !SOURCES.includes(k))];
  shareBar($("#d-share"), $("#d-share-legend"),
    names.map((k) => [k, bySrc[k] || 0, `src-${SOURCES.includes(k) ? k : "other"}`]));
}

function cache(c) {
  $("#d-cache").textContent = c.hit_ratio === null || c.hit_ratio === undefined
    ? "–" : `${Math.round(c.hit_ratio * 100)} %`;
  $("#d-cache-note").textContent = `${c.hits || 0} of ${c.lookups || 0} cloud lookups from the cache;`
    + ` ${c.entries || 0} kept`;
}

function cloud(s) {
  const relay = s.relay || {};
  const state = Object.fromEntries((s.cloud || []).map((e) => [e.url, e]));
  const names = [...new Set([...Object.keys(state), ...Object.keys(relay)])];
  fill("#d-relay", names.map((url) => {
    const r = relay[url] || { ok: 0, errors: {} };
    const e = state[url] || {};
    const ms = r.latency_ms || {};
    const errs = Object.entries(r.errors || {}).map(([k, n]) => `${k} ${n}`).join(", ");
    const fmt = (v) => (v === null || v === undefined ? "–" : `${v} ms`);
    return [el("td", { class: "value" }, url),
      el("td", { class: e.state === "closed" ? "ok" : e.state ? "bad" : "" }, e.state || "?"),
      String(r.ok), errs || "none", fmt(ms.p50), fmt(ms.p95), fmt(ms.mean)];
  }), "no cloud configured: unknown items are answered here as unknown");
  const open = (s.cloud || []).filter((e) => e.state && e.state !== "closed").length;
  $("#d-cloud").textContent = s.cloud && s.cloud.length
    ? (open ? `${open} of ${s.cloud.length} endpoints not answering` : "answering")
    : "none";
  $("#d-cloud").className = `big ${open ? "bad" : s.cloud && s.cloud.length ? "ok" : ""}`;
  $("#d-cloud-note").textContent = s.cloud && s.cloud.length
    ? `${s.cloud.length} endpoint${s.cloud.length > 1 ? "s" : ""}: latency and errors below`
    : "unknown items are answered unknown here";
}

const isHash = (v) => /^[0-9a-f]{32,64}$/i.test(v);

async function top() {
  const t = await api("GET", "/api/logs/top?hours=24");
  const items = t.items || [];
  fillRanked("#d-top-urls", items.filter(([v]) => v.includes("://")), "no URL blocked");
  fillRanked("#d-top-domains", items.filter(([v]) => !v.includes("://") && !isHash(v)), "no domain blocked");
  fillRanked("#d-top-files", items.filter(([v]) => isHash(v)), "no file blocked");
  fillRanked("#d-top-threats", t.threats || [], "no threat seen");
}

function patterns(p) {
  fill("#d-patterns", Object.entries(p.patterns || {}).map(([name, q]) => [name, q.version,
    age(q.age_seconds), el("td", { class: q.stale ? "bad" : "ok" }, q.stale ? "stale" : "fresh")]));
  $("#d-stale-after").textContent = p.stale_after
    ? `a pattern older than ${age(p.stale_after)} is stale` : "";
}

/** Read the status; `live` is a timer's refresh (the top lists then every 5th time). */
export async function loadDashboard(live = false) {
  const s = await api("GET", "/api/status");
  const items = s.items || {};
  sample(items);
  protection(s);
  answered(items);
  cache(s.cache || {});
  cloud(s);
  patterns(s.pattern || {});
  const svc = sorted(history.service, ["file", "web", "domain"]);
  const src = sorted(history.source, SOURCES);
  const empty = Object.keys(items).length ? "measuring: rates from the next refresh on" : "no queries yet";
  lineChart($("#d-rate-service"), $("#d-rate-service-legend"), svc, { step: REFRESH_SECONDS, slots: SLOTS, empty });
  lineChart($("#d-rate-source"), $("#d-rate-source-legend"), src, { step: REFRESH_SECONDS, slots: SLOTS, empty,
    cls: (name) => `src-${SOURCES.includes(name) ? name : "other"}` });
  const rateNow = Object.values(svc).reduce((n, v) => n + (v.length ? v[v.length - 1] : 0), 0);
  $("#d-rate-now").textContent = history.ticks ? `${rateNow.toFixed(1)}` : "measuring";
  if (!live || history.ticks % 5 === 0) {
    await top().catch((e) => { $("#d-top-note").textContent = e.message; });
  }
}
