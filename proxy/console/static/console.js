// The Rampart web console: plain JavaScript modules over the admin API (/api/), nothing
// fetched from anywhere else. This one logs in and out and shows one page at a time
// (#dashboard, #lists, ...); the session cookie is HttpOnly, its CSRF token kept per tab.
"use strict";

import { $, $$, api, applyRole, clearSession, onSubmit, onUnauthorized, say, session, setSession } from "./core.js";
import { REFRESH_SECONDS, loadDashboard } from "./dashboard.js";
import { loadLists, setupLists } from "./lists.js";
import { loadLogs, logsLive, setupLogs } from "./logs.js";
import { loadUpdates, setupUpdates } from "./updates.js";
import { loadCertificates } from "./certs.js";
import { loadSettings, setupSettings } from "./settings.js";
import { loadAccounts, setupAccounts } from "./accounts.js";

const PAGES = {
  dashboard: { title: "Dashboard", load: loadDashboard, live: () => true },
  lists: { title: "Lists", load: loadLists },
  logs: { title: "Logs", load: loadLogs, live: logsLive },
  updates: { title: "Updates", load: loadUpdates, live: () => true },  // a swap shows within 2 s
  certificates: { title: "Certificates", load: loadCertificates },
  settings: { title: "Settings", load: loadSettings },
  accounts: { title: "Accounts", load: loadAccounts },
};
let timer = null;
let current = "";

function showLogin(note) {
  clearInterval(timer);
  current = "";
  $("#nav").hidden = true; $("#who").hidden = true;
  $$(".page").forEach((p) => { p.hidden = true; });
  $("#login").hidden = false;
  document.title = "Log in: Rampart console";
  say($("#login"), note || "");
  $("#login-form").elements.password.focus();
}

async function showPage(name) {
  const page = PAGES[name] ? name : "dashboard";
  $("#login").hidden = true; $("#nav").hidden = false; $("#who").hidden = false;
  $$(".page").forEach((p) => { p.hidden = p.id !== page; });
  $$("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.page === page);
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  document.title = `${PAGES[page].title}: Rampart console`;
  clearInterval(timer);
  const arrived = current !== page;
  current = page;
  say(null, "");
  if (arrived) $(`#${page} h2`).focus({ preventScroll: true });
  try {
    await PAGES[page].load();
  } catch (e) { say(null, e.message, true); }
  if (PAGES[page].live) {
    timer = setInterval(() => {
      if (!PAGES[page].live()) return;
      PAGES[page].load(true).then(() => say(null, "")).catch((e) => say(null, e.message, true));
    }, REFRESH_SECONDS * 1000);
  }
}

function signedIn(doc) {
  setSession(doc);
  $("#who-name").textContent = `${doc.user} (${doc.role})`;
  document.body.dataset.role = doc.role;
}

document.addEventListener("DOMContentLoaded", () => {
  onUnauthorized(() => { clearSession(); showLogin("your session ended: log in again"); });
  onSubmit($("#login-form"), async (f, form) => {
    const doc = await api("POST", "/api/login", { user: f.get("user"), password: f.get("password") });
    form.elements.password.value = "";
    signedIn(doc);
    if (location.hash === "#dashboard" || !location.hash) showPage("dashboard");
    else showPage(location.hash.slice(1));
  });
  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (e) { /* ended already */ }
    clearSession();
    showLogin("logged out");
  });
  setupLists(); setupLogs(); setupUpdates(); setupSettings(); setupAccounts();
  window.addEventListener("hashchange", () => { if (session.role) showPage(location.hash.slice(1)); });
  api("GET", "/api/session").then((doc) => {
    signedIn(doc);
    showPage(location.hash.slice(1));
  }).catch(() => { applyRole(); showLogin(); });
});
