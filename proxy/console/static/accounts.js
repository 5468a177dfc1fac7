// Accounts and API keys: one's own password (everyone); users with their roles, API keys
// (a new key's secret shown once) and browser sessions (admins).
"use strict";

import { $, api, confirmButton, el, fill, guarded, may, onSubmit, session, when } from "./core.js";

const ROLES = ["viewer", "operator", "admin"];

function roleSelect(u) {
  if (!may("accounts.manage")) return u.role;
  const s = el("select", { "aria-label": `role of ${u.name}` },
    ROLES.map((r) => el("option", { value: r, selected: r === u.role }, r)));
  s.addEventListener("change", () => guarded($("#a-users-msg"), async () => {
    try {
      await api("POST", "/api/accounts/users/role", { name: u.name, role: s.value });
    } catch (e) { s.value = u.role; throw e; }
    u.role = s.value;
    return `${u.name} is now ${s.value}`;
  }));
  return el("td", {}, s);
}

function users(list) {
  fill("#a-users", list.map((u) => [el("td", { class: "value" }, u.name, u.name === session.user ? " (you)" : ""),
    roleSelect(u), when(u.created), when(u.password_changed),
    el("td", { class: "actions" }, u.name === session.user ? null : confirmButton("accounts.manage", "Remove",
      () => guarded($("#a-users-msg"), async () => {
        await api("POST", "/api/accounts/users/remove", { name: u.name });
        await loadAccounts();
        return `removed ${u.name}`;
      }), u.name))]));
}

function keys(list) {
  fill("#a-keys", list.map((k) => [el("td", { class: "value" }, k.name), k.role, k.created_by, when(k.created),
    el("td", { class: k.expired ? "bad" : "" }, k.expires ? `${when(k.expires)}${k.expired ? " (expired)" : ""}` : "never"),
    k.last_used ? when(k.last_used) : "never",
    el("td", { class: "actions" }, confirmButton("accounts.manage", "Revoke", () => guarded($("#a-keys-msg"), async () => {
      await api("POST", "/api/accounts/keys/revoke", { key: k.id });
      await loadAccounts();
      return `revoked the key ${k.name}`;
    }), k.name))]), "no API keys yet: a script or a monitor calls the API with one");
}

function sessions(list) {
  fill("#a-sessions", list.map((s) => [s.user, s.client, when(s.created), when(s.last_seen),
    el("td", { class: "actions" }, confirmButton("accounts.manage", "End", () => guarded($("#a-sessions-msg"), async () => {
      await api("POST", "/api/accounts/sessions/end", { id: s.id });
      await loadAccounts();
      return `ended a session of ${s.user}`;
    }), `the session of ${s.user}`))]), "no browser sessions");
}

export async function loadAccounts() {
  $("#a-manage").hidden = !may("accounts.manage");
  if (!may("accounts.manage")) return;
  const doc = await api("GET", "/api/accounts");
  users(doc.users || []);
  keys(doc.keys || []);
  sessions(doc.sessions || []);
}

export function setupAccounts() {
  onSubmit($("#password-form"), async (f, form) => {
    if (f.get("password") !== f.get("again")) throw new Error("the two passwords differ");
    await api("POST", "/api/accounts/password", { password: f.get("password") });
    form.reset();
    return "password changed; your other sessions were ended";
  });
  onSubmit($("#user-form"), async (f, form) => {
    await api("POST", "/api/accounts/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") });
    form.reset();
    await loadAccounts();
    return `added ${f.get("name")} (${f.get("role")})`;
  });
  onSubmit($("#key-form"), async (f, form) => {
    const body = { name: f.get("name"), role: f.get("role") };
    if (f.get("days")) body.expires_days = Number(f.get("days"));
    const r = await api("POST", "/api/accounts/keys", body);
    form.reset();
    $("#a-new-key-value").textContent = r.key;
    $("#a-new-key").hidden = false;
    await loadAccounts();
    return `created the key ${r.name}: copy it now, it is not shown again`;
  });
}
