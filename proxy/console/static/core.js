// What every page of the console shares: the API client, the caller's permissions,
// building elements without innerHTML (nothing the server sends is ever parsed as HTML),
// and showing each error next to the form it belongs to.
"use strict";

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// proxy/console/roles.py's ROLES: which controls to show. The server decides regardless.
const ROLES = {
  admin: ["read", "account.own", "lists.write", "updates.run", "settings.write", "accounts.manage"],
  operator: ["read", "account.own", "lists.write", "updates.run"],
  viewer: ["read", "account.own"],
};

export const session = { user: "", role: "", csrf: sessionStorage.getItem("rampart-csrf") || "" };
const hooks = { unauthorized: () => {} };

export function onUnauthorized(fn) { hooks.unauthorized = fn; }

export function may(permission) {
  return (ROLES[session.role] || []).includes(permission);
}

/** Hide (and take out of the tab order) every control the caller's role may not use. */
export function applyRole(root = document) {
  for (const e of $$("[data-needs]", root)) e.hidden = !may(e.dataset.needs);
}

export function setSession(doc) {
  session.user = doc.user; session.role = doc.role;
  if (doc.csrf) { session.csrf = doc.csrf; sessionStorage.setItem("rampart-csrf", doc.csrf); }
  applyRole();
}

export function clearSession() {
  session.user = ""; session.role = ""; session.csrf = "";
  sessionStorage.removeItem("rampart-csrf");
}

/** An API error: the server's message, and the field or key it names when it names one. */
export class ApiError extends Error {
  constructor(status, doc) {
    const err = (doc && doc.error) || {};
    super(err.message || `the server answered ${status}`);
    this.status = status; this.code = err.code || ""; this.field = err.field || err.key || "";
  }
}

export async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = session.csrf;
  }
  let res;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: { message: "the console cannot reach the appliance" } });
  }
  const doc = await res.json().catch(() => ({}));
  if (res.status === 401 && path !== "/api/login") hooks.unauthorized();
  if (!res.ok) throw new ApiError(res.status, doc);
  return doc;
}

/** el("td", {class: "x"}, "text", child...): an element; text is always text. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** A button that is made only for a role that may use it (null otherwise). */
export function actionButton(permission, label, onclick, cls = "secondary") {
  if (!may(permission)) return null;
  return el("button", { type: "button", class: cls, onclick }, label);
}

/** A button for an action that cannot be undone: the first press asks once more on the
 *  button itself (no pop-up, keyboard and screen reader alike), the second does it. */
export function confirmButton(permission, label, work, name) {
  const b = actionButton(permission, label, () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1"; b.textContent = `Really ${label.toLowerCase()}?`; b.classList.add("danger");
      setTimeout(() => { b.dataset.armed = ""; b.textContent = label; b.classList.remove("danger"); }, 4000);
      return;
    }
    work();
  });
  if (b && name) b.setAttribute("aria-label", `${label} ${name}`);
  return b;
}

/** Replace a table's body with rows: each row an array of cells (text or elements). */
export function fill(table, rows, empty = "nothing here yet") {
  const body = $(`${table} tbody`);
  const heads = $$(`${table} thead th`);
  const cols = heads.length || 1;
  // each cell names its column, for tables shown as stacked cards at a narrow width
  const labels = heads.map((th) => ($(".sr", th) ? "" : th.textContent.trim()));
  body.replaceChildren(...rows.map((cells) => el("tr", {}, cells.map((c, i) => {
    const td = c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c);
    if (labels[i]) td.dataset.label = labels[i];
    return td;
  }))));
  if (!rows.length) body.appendChild(el("tr", {}, el("td", { colspan: cols, class: "empty" }, empty)));
}

/** Fill `ol` with [label, count] pairs. */
export function fillRanked(sel, pairs, empty) {
  const ol = $(sel);
  ol.replaceChildren(...pairs.map(([v, n]) => el("li", {}, el("span", { class: "value" }, v),
    el("span", { class: "count" }, String(n)))));
  if (!pairs.length) ol.appendChild(el("li", { class: "empty" }, empty));
}

export function age(seconds) {
  if (seconds === undefined || seconds === null) return "";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

/** A time the API gives (Unix seconds or ISO-8601) in the browser's local form. */
export function when(t) {
  if (t === undefined || t === null || t === "") return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const p = (n) => String(n).padStart(2, "0");  // 2026-03-01 14:05: short, sorts, one reading
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** "1 rule", "3 rules". */
export function count(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** Show `text` in the message spot of `where` (a form or section); errors in red. */
export function say(where, text, isError = false) {
  const box = where ? (where.matches(".msg") ? where : $(".msg", where)) : $("#message");
  if (!box) return;
  box.textContent = text || "";
  box.classList.toggle("error", Boolean(isError && text));
}

/** Run `work` for a form's submit: its button is busy meanwhile, any error shown in place. */
export function onSubmit(form, work) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("button[type=submit]", form);
    if (button) button.disabled = true;
    say(form, "");
    try {
      const note = await work(new FormData(form), form);
      if (typeof note === "string") say(form, note);
    } catch (e) {
      say(form, e.message, true);
      markField(form, e.field);
    } finally { if (button) button.disabled = false; }
  });
}

/** Mark the input an error names (the server's 'field'), so the eye finds it. */
export function markField(form, name) {
  for (const i of $$("[aria-invalid]", form)) i.removeAttribute("aria-invalid");
  const input = name && form.elements ? form.elements.namedItem(name) : null;
  if (input && input.setAttribute) { input.setAttribute("aria-invalid", "true"); input.focus(); }
}

/** Run a button's action with its errors shown in `where`. */
export async function guarded(where, work) {
  say(where, "");
  try {
    const note = await work();
    if (typeof note === "string") say(where, note);
  } catch (e) { say(where, e.message, true); }
}

/** One value per line (or comma): client networks, values to add. */
export function lines(text) {
  return String(text || "").split(/[\n,]+/).map((s) => s.trim()).filter(Boolean);
}
