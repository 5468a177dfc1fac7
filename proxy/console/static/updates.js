// Pattern updates: what is served and how old, where updates come from and how the last
// went, the versions kept for rollback, update now / roll back, and the update history.
"use strict";

import { $, age, api, el, fill, guarded, may, say, when } from "./core.js";

let busy = false;  // an update or rollback is running: its buttons stay off meanwhile

function facts(dl, pairs) {
  $(dl).replaceChildren(...pairs.filter(([, v]) => v !== undefined)
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function lastResult(last) {
  if (!last) return "none yet";
  const what = last.ok ? (last.changed ? `installed ${last.version}` : "already up to date") : `failed: ${last.reason}`;
  return el("span", { class: last.ok ? "ok" : "bad" }, `${what} (${when(last.at)})${!last.ok && last.message ? `: ${last.message}` : ""}`);
}

async function history() {
  try {
    const doc = await api("GET", "/api/logs?log=updates&limit=20");
    fill("#u-history", (doc.rows || []).map((r) => [el("td", { class: "nowrap" }, when(r.time)),
      el("td", { class: r.ok ? "ok" : "bad" }, r.ok ? (r.changed ? "installed" : "up to date") : "failed"),
      r.version, r.reason, el("td", { class: "value" }, r.message),
      r.seconds === null || r.seconds === undefined ? "" : `${r.seconds} s`]), "no update has run yet");
  } catch (e) {
    fill("#u-history", [], e.message);
  }
}

export async function loadUpdates() {
  const s = await api("GET", "/api/status");
  const p = s.pattern || {};
  const up = p.update;
  facts("#u-facts", [
    ["served", `${p.version || "?"}${p.sample ? " (the bundled sample)" : ""}, ${age(p.age_seconds)} old`],
    ["state", el("span", { class: p.stale ? "bad" : "ok" }, p.stale ? `stale (older than ${age(p.stale_after)})` : "fresh")],
    ["update source", up ? el("span", { class: "value" }, up.source || "") : "none configured (update_source and update_key)"],
    ["last update", up ? lastResult(up.last) : undefined],
    ["last success", up ? (up.last_success ? when(up.last_success) : "never") : undefined],
    ["failures in a row", up ? String(up.consecutive_failures || 0) : undefined],
    ["next attempt", up && up.next_attempt ? when(up.next_attempt) : undefined],
    ["source expires", p.source_expires ? `${when(p.source_expires)}${p.source_expired ? " (expired)" : ""}` : undefined],
  ]);
  fill("#u-patterns", Object.entries(p.patterns || {}).map(([name, q]) => [name, q.version,
    age(q.age_seconds), el("td", { class: q.stale ? "bad" : "ok" }, q.stale ? "stale" : "fresh")]));
  const versions = p.versions || [];
  fill("#u-versions", versions.slice().reverse().map((v) => [el("td", { class: "value" }, v),
    v === p.stored ? el("td", { class: "ok" }, "(current)") : ""]), "no versions kept (a fixed pattern directory)");
  $("#update-now").disabled = busy || !up;
  $("#update-now").title = up ? "" : "no update source configured";
  const current = versions.indexOf(p.stored);
  $("#rollback").disabled = busy || current <= 0;
  $("#rollback").title = current <= 0 ? "no older version kept" : "";
  $("#u-controls").hidden = !may("updates.run");
  await history();
}

export function setupUpdates() {
  const where = $("#u-msg");
  const run = (work) => guarded(where, async () => {
    busy = true;
    $("#update-now").disabled = true; $("#rollback").disabled = true;
    try { return await work(); } finally { busy = false; await loadUpdates().catch(() => {}); }
  });
  $("#update-now").addEventListener("click", () => run(async () => {
    say(where, "asking the update source…");
    const r = await api("POST", "/api/updates/now", {});
    if (!r.ok) throw new Error(`the update failed: ${r.reason}${r.message ? `: ${r.message}` : ""}`);
    return r.changed ? `installed ${r.version}` : "already up to date";
  }));
  $("#rollback").addEventListener("click", () => run(async () => {
    const r = await api("POST", "/api/updates/rollback", {});
    return `rolled back from ${r.from} to ${r.to}`;
  }));
}
