// Small charts drawn as plain SVG by this code (no library): a line chart of rates over
// time with a legend, and a bar of shares. Colours come from the stylesheet (series-N).
"use strict";

import { el } from "./core.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 140, PAD_L = 44, PAD_B = 18, PAD_T = 8;

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * Draw `series` ({name: [values...]}, oldest first, one sample every `step` seconds) into
 * `svg`, and its legend (with each series' latest value) into `legend`.
 */
export function lineChart(svg, legend, series,
  { step = 3, slots: most = 60, unit = "/s", cls = null, empty = "no queries yet" } = {}) {
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const names = Object.keys(series);
  const colour = (name, k) => (cls ? cls(name) : `series-${k % 8}`);
  // the window grows with the samples (at least 10) up to `most`, so a new chart is not empty
  const slots = Math.min(most, Math.max(10, ...names.map((n) => series[n].length)));
  const peak = niceMax(Math.max(0, ...names.flatMap((n) => series[n])));
  const x = (i, len) => PAD_L + ((slots - len + i) * (W - PAD_L - 4)) / (slots - 1);
  const y = (v) => H - PAD_B - (v / peak) * (H - PAD_B - PAD_T);
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    const v = peak * frac;
    parts.push(svgEl("line", { x1: PAD_L, x2: W - 4, y1: y(v), y2: y(v), class: "grid" }));
    parts.push(svgEl("text", { x: PAD_L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
      v >= 10 ? v.toFixed(0) : v.toFixed(1)));
  }
  const span = slots * step;
  parts.push(svgEl("text", { x: PAD_L, y: H - 4, class: "axis" },
    span < 120 ? `${span} s ago` : `${Math.round(span / 60)} min ago`));
  parts.push(svgEl("text", { x: W - 4, y: H - 4, class: "axis", "text-anchor": "end" }, "now"));
  names.forEach((name, k) => {
    const vals = series[name];
    if (vals.length < 1) return;
    const pts = vals.map((v, i) => `${x(i, vals.length).toFixed(1)},${y(v).toFixed(1)}`);
    if (vals.length === 1) pts.unshift(`${(x(0, 1) - 4).toFixed(1)},${y(vals[0]).toFixed(1)}`);
    parts.push(svgEl("polyline", { points: pts.join(" "), class: `line ${colour(name, k)}` }));
  });
  svg.replaceChildren(...parts);
  legend.replaceChildren(...names.map((name, k) => {
    const vals = series[name];
    const now = vals.length ? vals[vals.length - 1] : 0;
    return el("li", {}, el("span", { class: `swatch ${colour(name, k)}` }), `${name} `,
      el("b", {}, `${now.toFixed(1)}${unit}`));
  }));
  if (!names.length) legend.appendChild(el("li", { class: "empty" }, empty));
}

/** A horizontal bar split into `parts` ([label, count, cls]), with a legend of shares. */
export function shareBar(svg, legend, parts) {
  const total = parts.reduce((n, [, v]) => n + v, 0);
  svg.setAttribute("viewBox", "0 0 600 16");
  svg.setAttribute("preserveAspectRatio", "none");
  let at = 0;
  const rects = [];
  for (const [label, v, cls] of parts) {
    if (!v) continue;
    const w = (v / total) * 600;
    const rect = svgEl("rect", { x: at, y: 0, width: w, height: 16, class: cls });
    rect.appendChild(svgEl("title", {}, `${label}: ${v}`));
    rects.push(rect);
    at += w;
  }
  if (!total) rects.push(svgEl("rect", { x: 0, y: 0, width: 600, height: 16, class: "none" }));
  svg.replaceChildren(...rects);
  legend.replaceChildren(...parts.filter(([, v]) => v).map(([label, v, cls]) =>
    el("li", {}, el("span", { class: `swatch ${cls}` }), `${label} `,
      el("b", {}, `${Math.round((100 * v) / total)} %`))));
}
