// The logs: one form searches any of the five logs with its own filters (only the fields
// that log has are shown and sent), newest first, a page at a time by the server's cursor;
// the same search exported as CSV or JSON.
"use strict";

import { $, $$, api, count, el, fill, onSubmit, say, when } from "./core.js";

const FIRST = ["time", "actor", "client", "service", "item", "verdict", "action", "source", "matched",
  "threat", "ok", "changed", "version", "reason", "endpoint", "kind", "latency_ms", "message", "detail"];
const HIDDEN = ["id", "origin", "blocked", "count", "path"];
const page = { cursors: [null], at: 0, next: null };

/** The search's parameters from the form: only the fields the chosen log has. */
export function logParams() {
  const form = $("#log-form");
  const log = form.elements.log.value;
  const q = new URLSearchParams({ log });
  for (const input of $$("[name]", form)) {
    const holder = input.closest("[data-logs]");
    if (input.name === "log" || input.name === "limit" || !input.value.trim()) continue;
    if (holder && !holder.dataset.logs.split(" ").includes(log)) continue;
    if (input.type === "datetime-local") {
      const t = new Date(input.value).getTime();
      if (!Number.isNaN(t)) q.set(input.name, String(Math.floor(t / 1000)));
    } else q.set(input.name, input.value.trim());
  }
  return q;
}

function showFields() {
  const log = $("#log-form").elements.log.value;
  for (const holder of $$("#log-form [data-logs]")) holder.hidden = !holder.dataset.logs.split(" ").includes(log);
}

function cellOf(col, v) {
  if (col === "time") {  // to the second; today's rows without the date
    const d = new Date(v);
    const full = `${when(v)}:${String(d.getSeconds()).padStart(2, "0")}`;
    const today = d.toDateString() === new Date().toDateString();
    return el("td", { class: "nowrap", title: full }, today ? full.slice(11) : full);
  }
  if (col === "latency_ms" && typeof v === "number") return el("td", { class: "nowrap" }, `${v.toFixed(2)} ms`);
  if (typeof v === "boolean") return el("td", { class: v ? "ok" : "bad" }, v ? "yes" : "no");
  if (col === "verdict" && ["malicious", "dangerous", "highly_suspicious"].includes(v)) return el("td", { class: "bad" }, v);
  if (["item", "matched", "detail", "message", "threat"].includes(col)) return el("td", { class: "value" }, v);
  return el("td", {}, v === null || v === undefined ? "" : String(v));
}

export async function loadLogs() {
  const q = logParams();
  const limit = $("#log-form").elements.limit.value || "50";
  for (const [id, fmt] of [["#log-csv", "csv"], ["#log-json", "json"]]) {
    const e = new URLSearchParams(q); e.set("format", fmt);
    $(id).href = `/api/logs/export?${e}`;
  }
  const cursor = page.cursors[page.at];
  const p = new URLSearchParams(q); p.set("limit", limit);
  if (cursor) p.set("cursor", cursor);
  const doc = await api("GET", `/api/logs?${p}`);
  const rows = doc.rows || [];
  const keys = rows.length ? Object.keys(rows[0]).filter((c) => !HIDDEN.includes(c)) : [];
  const filled = (c) => rows.some((r) => r[c] !== "" && r[c] !== null && r[c] !== undefined);
  const cols = [...FIRST.filter((c) => keys.includes(c)), ...keys.filter((c) => !FIRST.includes(c))]
    .filter(filled);  // a column empty on the whole page only takes room
  const head = $("#log-table thead tr");
  head.replaceChildren(...(cols.length ? cols : ["rows"]).map((c) => el("th", { scope: "col" }, c === "latency_ms" ? "latency" : c.replace("_", " "))));
  fill("#log-table", rows.map((r) => cols.map((c) => cellOf(c, r[c]))), "nothing logged matches this search");
  page.next = doc.next;
  $("#log-newer").disabled = page.at === 0;
  $("#log-older").disabled = !doc.next;
  $("#log-page").textContent = `page ${page.at + 1}, ${count(rows.length, "row")}`;
}

/** The logs page refreshes on its own only on its first page, with Live on. */
export function logsLive() {
  return page.at === 0 && $("#log-live").checked;
}

async function turn(where, delta) {
  if (delta > 0 && page.next) { page.cursors[page.at + 1] = page.next; page.at += 1; }
  if (delta < 0 && page.at > 0) page.at -= 1;
  try { await loadLogs(); } catch (e) { say(where, e.message, true); }
}

export function setupLogs() {
  const form = $("#log-form");
  form.elements.log.addEventListener("change", () => { showFields(); page.cursors = [null]; page.at = 0; });
  onSubmit(form, async () => { page.cursors = [null]; page.at = 0; await loadLogs(); });
  $("#log-older").addEventListener("click", () => turn(form, 1));
  $("#log-newer").addEventListener("click", () => turn(form, -1));
  showFields();
}
