// Certificates: the appliance CA (its subject and SHA-256 fingerprint read from /ca.pem here,
// so an administrator can compare it with what a product shows), every certificate's expiry,
// the download, and how products use it.
"use strict";

import { $, api, el, fill } from "./core.js";

const NAMES = { "2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST" };
const MAX_PEM = 1 << 16;

/** One DER element at `at`: [tag, start of its content, end of its content]. */
function tlv(der, at) {
  const tag = der[at];
  let len = der[at + 1], off = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3) throw new Error("not a certificate");
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | der[off + i];
    off += n;
  }
  if (off + len > der.length) throw new Error("not a certificate");
  return [tag, off, off + len];
}

function children(der, start, end) {
  const out = [];
  for (let at = start; at < end;) { const t = tlv(der, at); out.push(t); at = t[2]; }
  return out;
}

function oid(bytes) {
  const parts = [Math.floor(bytes[0] / 40), bytes[0] % 40];
  let v = 0;
  for (const b of bytes.slice(1)) { v = (v << 7) | (b & 0x7f); if (!(b & 0x80)) { parts.push(v); v = 0; } }
  return parts.join(".");
}

function nameOf(der, [, start, end]) {
  const dec = new TextDecoder();
  return children(der, start, end).map(([, s, e]) => {
    const atv = children(der, s, e)[0];  // RDN: a SET of one (type, value) SEQUENCE
    const [[, os, oe], [, vs, ve]] = children(der, atv[1], atv[2]);
    const key = oid(der.slice(os, oe));
    return `${NAMES[key] || key}=${dec.decode(der.slice(vs, ve))}`;
  }).join(", ");
}

/** Subject and fingerprint of the first certificate in `pem`. */
export async function describe(pem) {
  const b64 = (pem.match(/-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/) || [])[1];
  if (!b64) throw new Error("ca.pem holds no certificate");
  const der = Uint8Array.from(atob(b64.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  const [, cs, ce] = tlv(der, 0);
  const [, ts, te] = children(der, cs, ce)[0];
  const tbs = children(der, ts, te);
  const fields = tbs[0][0] === 0xa0 ? tbs.slice(1) : tbs;  // [0] version, when present
  const subject = nameOf(der, fields[4]);
  let fingerprint = "";
  if (crypto.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", der));
    fingerprint = [...digest].map((b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
  }
  return { subject, fingerprint };
}

export async function loadCertificates() {
  const s = await api("GET", "/api/status");
  const c = s.certificates || {};
  const label = { ca: "appliance CA", "tls-console": "console door", "tls-server": "query door (HTTPS)" };
  fill("#c-table", (c.expiry || []).map((e) => [label[e.cert] || e.cert,
    new Date(e.not_after).toLocaleDateString(),
    el("td", { class: e.days_left < 30 ? "bad" : "" }, `${e.days_left} days`)]));
  $("#c-warnings").replaceChildren(...(c.warnings || []).map((w) => el("li", {}, w)));
  const tls = (s.doors || []).find((d) => d.scheme === "https");
  $("#c-https").textContent = tls ? `https://${location.hostname}:${tls.port}` : "the query door's HTTPS port (8443 unless changed)";
  try {
    const res = await fetch("/ca.pem", { credentials: "same-origin" });
    const text = (await res.text()).slice(0, MAX_PEM);
    const d = await describe(text);
    $("#c-subject").textContent = d.subject;
    $("#c-fingerprint").textContent = d.fingerprint || "(the browser cannot compute it here)";
  } catch (e) {
    $("#c-subject").textContent = `cannot read ca.pem: ${e.message}`;
  }
}
