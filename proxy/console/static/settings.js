// Settings: the keys the console may change as a form (each takes effect at once), every
// other key read-only with where it is set. Only what changed is sent; an error naming a
// key is shown on that key's row.
"use strict";

import { $, api, el, fill, may, say } from "./core.js";

let doc = { settings: [], config_file: null };

const shown = (v) => (v === null || v === undefined || v === "" ? "(none)"
  : Array.isArray(v) ? (v.join(", ") || "(none)") : String(v));
const isList = (t) => /^(list|tuple)\[/.test(t || "");

function input(s) {
  const id = `set-${s.key}`;
  const common = { id, name: s.key, disabled: !may("settings.write"), "aria-describedby": `${id}-help` };
  if (s.type === "bool") return el("input", { ...common, type: "checkbox", checked: Boolean(s.value) });
  if (s.choices) {
    return el("select", common, s.choices.map((c) => el("option", { value: c, selected: c === s.value }, c)));
  }
  if (isList(s.type)) {
    const e = el("textarea", { ...common, rows: 3, cols: 40, placeholder: "one per line" });
    e.value = (s.value || []).join("\n");
    return e;
  }
  const num = s.type === "int" || s.type === "float";
  return el("input", { ...common, type: num ? "number" : "text", step: s.type === "float" ? "any" : num ? "1" : null,
    value: s.value === null || s.value === undefined ? "" : String(s.value), size: num ? 10 : 32 });
}

/** What the input holds, in the setting's type (the server checks it again). */
function valueOf(s, e) {
  if (s.type === "bool") return e.checked;
  if (isList(s.type)) return e.value.split("\n").map((x) => x.trim()).filter(Boolean);
  if (s.type === "int" || s.type === "float") return e.value.trim() === "" ? null : Number(e.value);
  return e.value;
}

function origin(s) {
  if (s.set_by === "config file") return `set in the config file${doc.config_file ? ` (${doc.config_file})` : ""}`;
  if (s.set_by === "command line") return "set on the command line";
  if (s.set_by === "console") return "changed here";
  return "default";
}

function editableRow(s) {
  const reset = may("settings.write") && s.set_by === "console"
    ? el("button", { type: "button", class: "secondary", onclick: () => save({ [s.key]: null }) }, "Use default") : null;
  return el("div", { class: "setting", dataset: { key: s.key } },
    el("label", { for: `set-${s.key}`, class: "key" }, s.key),
    el("div", { class: "field" }, input(s), reset),
    el("p", { id: `set-${s.key}-help`, class: "help" }, s.help,
      el("span", { class: "muted" }, ` Default ${shown(s.default)}${s.set_by === "console" ? "; changed here" : ""}.`)),
    el("p", { class: "msg" }));
}

function render() {
  const editable = doc.settings.filter((s) => s.editable);
  const fixed = doc.settings.filter((s) => !s.editable && s.set_by !== "default");
  const rest = doc.settings.filter((s) => !s.editable && s.set_by === "default");
  $("#s-fields").replaceChildren(...editable.map(editableRow));
  if (!editable.length) $("#s-fields").append(el("p", { class: "muted" }, "no setting can be changed here"));
  fill("#s-fixed", fixed.map((s) => [el("td", { class: "key" }, s.key), el("td", { class: "value" }, shown(s.value)),
    origin(s), el("td", { class: "small" }, s.help)]), "none: the config file and the command line set nothing");
  const filter = $("#s-filter").value.trim().toLowerCase();
  const rows = rest.filter((s) => !filter || `${s.key} ${s.help}`.toLowerCase().includes(filter));
  fill("#s-defaults", rows.map((s) => [el("td", { class: "key" }, s.key), el("td", { class: "value" }, shown(s.value)),
    el("td", { class: "small" }, s.help)]), "no key matches");
  $("#s-defaults-count").textContent = String(rest.length);
  $("#s-file").textContent = doc.config_file ? `config file: ${doc.config_file}` : "no config file: built-in defaults and the command line";
}

async function save(changes) {
  const form = $("#settings-form");
  for (const row of form.querySelectorAll(".setting")) { row.classList.remove("invalid"); say($(".msg", row), ""); }
  say(form.querySelector(":scope > .msg"), "");
  if (!Object.keys(changes).length) { say(form.querySelector(":scope > .msg"), "nothing changed"); return; }
  try {
    doc = await api("POST", "/api/settings", { changes });
    render();
    say(form.querySelector(":scope > .msg"), `saved ${Object.keys(changes).join(", ")}: in effect now`);
  } catch (e) {
    const key = e.field || Object.keys(changes).find((k) => e.message.includes(k));
    const row = key && form.querySelector(`.setting[data-key="${CSS.escape(key)}"]`);
    if (row) { row.classList.add("invalid"); say($(".msg", row), e.message, true); $("[name]", row).focus(); }
    say(form.querySelector(":scope > .msg"), row ? `not saved: see ${key} above` : e.message, true);
  }
}

export async function loadSettings() {
  try {
    doc = await api("GET", "/api/settings");
  } catch (e) {
    if (e.status === 404) {
      doc = { settings: [], config_file: null };
      render();
      throw new Error("this appliance's API has no settings yet (GET /api/settings)");
    }
    throw e;
  }
  render();
}

export function setupSettings() {
  $("#s-filter").addEventListener("input", render);
  $("#settings-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const changes = {};
    for (const s of doc.settings.filter((x) => x.editable)) {
      const e = document.getElementById(`set-${s.key}`);
      if (!e) continue;
      const v = valueOf(s, e);
      if (JSON.stringify(v) !== JSON.stringify(s.value)) changes[s.key] = v;
    }
    save(changes);
  });
}
