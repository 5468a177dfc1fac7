// The approved and blocked lists: the rules in a filterable table, add, edit (in a dialog),
// remove, test a URL for a client, import (file or paste) and export.
"use strict";

import { $, $$, actionButton, api, confirmButton, count, el, fill, guarded, lines, may, onSubmit, say, when } from "./core.js";

const MAX_IMPORT_BYTES = 8 << 20;  // the API's limit on an import's text
let rules = [];

function scope(e) {
  return e.clients && e.clients.length ? e.clients.join(", ") : "every client";
}

function expiry(e) {
  if (!e.expires) return el("td", { class: "muted" }, "never");
  return el("td", { class: e.expired ? "bad nowrap" : "nowrap" }, `${when(e.expires)}${e.expired ? " (expired)" : ""}`);
}

function matches(e, f) {
  if (f.list && e.list !== f.list) return false;
  if (f.kind && e.kind !== f.kind) return false;
  if (!f.text) return true;
  return [e.value, e.note, e.added_by, scope(e)].some((v) => String(v || "").toLowerCase().includes(f.text));
}

function removeButton(e) {
  return confirmButton("lists.write", "Remove", () => guarded($("#l-table-msg"), async () => {
    await api("POST", "/api/lists/remove", { values: [e.value], list: e.list, kind: e.kind });
    await loadLists();
    return `removed ${e.kind} ${e.value} from the ${e.list} list`;
  }), e.value);
}

function render() {
  const f = { list: $("#l-filter-list").value, kind: $("#l-filter-kind").value,
    text: $("#l-filter-text").value.trim().toLowerCase() };
  const shown = rules.filter((e) => matches(e, f));
  fill("#l-entries", shown.map((e) => [
    el("td", {}, el("span", { class: `tag ${e.list}` }, e.list)), e.kind,
    el("td", { class: "value" }, e.value), scope(e), expiry(e), e.note,
    el("td", { class: "small", title: e.origin ? `from ${e.origin}` : null }, e.added_by || "?", el("br"),
      el("span", { class: "muted nowrap" }, when(e.created))),
    el("td", { class: "actions" },
      actionButton("lists.write", "Edit", () => openEdit(e)), removeButton(e)),
  ]), rules.length ? "no rule matches the filter" : "no rules yet: the patterns decide everything");
  $("#l-count").textContent = rules.length === shown.length
    ? count(rules.length, "rule") : `showing ${shown.length} of ${count(rules.length, "rule")}`;
}

export async function loadLists() {
  const doc = await api("GET", "/api/lists");
  rules = doc.entries || [];
  render();
  $("#l-actions").hidden = !may("lists.write");
}

function openEdit(e) {
  const form = $("#edit-form");
  form.elements.value.value = e.value;
  form.elements.kind.value = e.kind;
  form.elements.list.value = e.list;
  form.elements.note.value = e.note || "";
  form.elements.clients.value = (e.clients || []).join("\n");
  form.elements.expires.value = "";
  $("#edit-current").textContent = `${e.kind} ${e.value}; expires ${e.expires ? when(e.expires) : "never"}`;
  say(form, "");
  $("#l-edit").showModal();
  form.elements.list.focus();
}

async function addRules(f, form) {
  const body = { list: f.get("list"), values: lines(f.get("values")), note: f.get("note") || "" };
  if (f.get("kind")) body.kind = f.get("kind");
  const clients = lines(f.get("clients"));
  if (clients.length) body.clients = clients;
  if (f.get("expires")) body.expires = f.get("expires").trim();
  if (!body.values.length) throw new Error("enter at least one value");
  const doc = await api("POST", "/api/lists", body);
  form.reset();
  await loadLists();
  return (doc.messages || []).join("; ");
}

async function editRule(f) {
  const body = { value: f.get("value"), kind: f.get("kind"), list: f.get("list"),
    note: f.get("note") || "", clients: lines(f.get("clients")) };
  if (f.get("expires").trim()) body.expires = f.get("expires").trim();
  const doc = await api("POST", "/api/lists/edit", body);
  $("#l-edit").close();
  await loadLists();
  say($("#l-table-msg"), `changed ${doc.entry.kind} ${doc.entry.value}`);
}

async function testUrl(f) {
  const body = { url: f.get("url").trim() };
  if (f.get("client").trim()) body.client = f.get("client").trim();
  const doc = await api("POST", "/api/lists/test", body);
  const d = doc.decision;
  $("#test-out").hidden = false;
  const verdict = $("#test-decision");
  verdict.replaceChildren();
  if (d) {
    const bad = ["dangerous", "highly_suspicious"].includes(d.rating);
    verdict.append(el("b", { class: bad ? "bad" : d.rating === "safe" ? "ok" : "" }, d.rating.replace("_", " ")),
      ` from ${d.source}`, d.matched ? ` (${d.matched})` : "");
  } else verdict.append(el("b", {}, "not known here"), ": no rule or pattern entry matches");
  $("#test-result").textContent = (doc.lines || []).join("\n");
  const others = (doc.rules || []).filter((r) => !d || r.value !== d.matched);
  $("#test-rules").replaceChildren(...others.map((r) => el("li", {}, `${r.list} ${r.kind} `, el("code", {}, r.value))));
  $("#test-others").hidden = !others.length;
}

async function importRules(f, form) {
  const file = form.elements.file.files[0];
  let data = f.get("data");
  if (file) {
    if (file.size > MAX_IMPORT_BYTES) throw new Error(`the file is over ${MAX_IMPORT_BYTES >> 20} MB`);
    data = await file.text();
  }
  if (!data.trim()) throw new Error("choose a file or paste the rules");
  const body = { format: f.get("format"), data };
  if (f.get("format") === "plain") body.list = f.get("list");
  if (f.get("kind")) body.kind = f.get("kind");
  const doc = await api("POST", "/api/lists/import", body);
  form.reset();
  await loadLists();
  return doc.message || `added ${doc.added}`;
}

export function setupLists() {
  for (const sel of ["#l-filter-text", "#l-filter-list", "#l-filter-kind"]) $(sel).addEventListener("input", render);
  onSubmit($("#add-form"), addRules);
  onSubmit($("#edit-form"), editRule);
  onSubmit($("#test-form"), testUrl);
  onSubmit($("#import-form"), importRules);
  $("#edit-cancel").addEventListener("click", () => $("#l-edit").close());
  $("#edit-never").addEventListener("click", () => { $("#edit-form").elements.expires.value = "never"; });
  const fmt = $("#import-form").elements.format;
  const plainOnly = () => $$(".plain-only").forEach((e) => { e.hidden = fmt.value !== "plain"; });
  fmt.addEventListener("change", plainOnly);
  $("#import-form").addEventListener("reset", () => setTimeout(plainOnly));
  plainOnly();
}
