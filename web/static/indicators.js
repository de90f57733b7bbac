// msante web client: the coordinators' indicators page (#/indicateurs), from /api/indicators.
// Per hospital and month: events received by kind, ED visits whose GP was told (and why not the
// others), the GP's notices delivered and read, the median time to notify. Bar charts drawn here
// as inline SVG (no library, nothing fetched), horizontal so a phone shows twelve months legibly,
// each with its figures as a table for screen readers. Loaded before app.js, whose helpers
// ($, el, api, setView) it uses once the page runs.
"use strict";

const KIND_NAMES = { ADM: "Admissions", URG: "Passages aux urgences", SOR: "Sorties", DOC: "Documents",
                     UPD: "Mises à jour", ANN: "Annulations" };
const KIND_COLORS = { ADM: "#0b5c8e", URG: "#a4161a", SOR: "#1f7a3a", DOC: "#6a3d9a", UPD: "#8a5a12", ANN: "#5b6878" };
const ED_PARTS = [   // an ED visit's GP: told, or why not (hospital/indicators.py REASONS)
  ["notified", "Médecin traitant prévenu", "#1f7a3a"], ["no_gp", "Aucun médecin traitant indiqué", "#a4161a"],
  ["gp_without_box", "Médecin traitant sans boîte MSSanté", "#d9822b"], ["unknown_rpps", "RPPS inconnu ou invalide", "#6a3d9a"],
  ["delivery_failed", "Échec de l'envoi", "#4f5b6a"], ["pending", "En cours de traitement", "#a9b4c0"]];
const RECEIPT_PARTS = [["read", "Lus", "#1f7a3a"], ["unread", "Remis, pas encore lus", "#8cc79b"],
                       ["undelivered", "Pas (encore) remis", "#c4ccd5"]];
const CHART = { width: 340, label: 66, room: 78, row: 26, bar: 16 };   // SVG units: about a phone's CSS pixels
const SVG_NS = "http://www.w3.org/2000/svg";
const monthFmt = new Intl.DateTimeFormat("fr-FR", { month: "short", year: "numeric", timeZone: "UTC" });
const percent = (share) => (share === null || share === undefined ? "—" : `${Math.round(share * 100)} %`);
const minutes = (m) => (m === null ? "—" : m < 120 ? `${Math.round(m)} min` : `${(m / 60).toFixed(1).replace(".", ",")} h`);

function openIndicators() {
  setView("indicators");
  $("indicators").hidden = false;
  loadIndicators();
}

async function loadIndicators() {
  const form = $("indicators-form");
  const params = new URLSearchParams();
  for (const name of ["from", "to", "structure"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  $("indicators-status").textContent = "Chargement…";
  $("indicators-results").replaceChildren();
  const response = await api(`/api/indicators?${params}`);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("indicators-status").textContent = response.status === 403
      ? "Accès refusé : les indicateurs sont réservés aux administrateurs et aux coordinateurs d'un cercle de soins."
      : (body.message || "").startsWith("structure") ? "FINESS invalide : 9 chiffres ou lettres."
        : "Période invalide : le premier mois doit précéder le dernier, 36 mois au plus.";
    return;
  }
  const { from, to, items } = await response.json();
  const months = monthsBetween(from, to);
  form.elements.from.value ||= months[0];   // the period the server chose, shown where it can be changed
  form.elements.to.value ||= months.at(-1);
  $("indicators-status").textContent = items.length
    ? `De ${monthFmt.format(new Date(`${months[0]}-01`))} à ${monthFmt.format(new Date(`${months.at(-1)}-01`))}`
    : "Aucun événement hospitalier reçu sur cette période.";
  const hospitals = new Map();
  for (const item of items) {
    if (!hospitals.has(item.finess)) hospitals.set(item.finess, { name: item.structure, months: new Map() });
    hospitals.get(item.finess).months.set(item.month, item);
  }
  $("indicators-results").replaceChildren(...[...hospitals].map(([finess, h]) => hospitalSection(finess, h, months)));
}

function monthsBetween(from, to) {   // "YYYY-MM" of each month in [from, to)
  const months = [];
  const at = new Date(from);
  const end = new Date(to);
  while (at < end && months.length < 36) {
    months.push(at.toISOString().slice(0, 7));
    at.setUTCMonth(at.getUTCMonth() + 1, 1);
  }
  return months;
}

function hospitalSection(finess, hospital, months) {
  const rows = months.map((month) => ({ month, item: hospital.months.get(month) }));
  const label = (month) => monthFmt.format(new Date(`${month}-01`));
  const sum = (key) => rows.reduce((total, r) => total + (r.item?.[key] || 0), 0);
  const edVisits = sum("ed_visits"), notices = sum("gp_notices");
  const kinds = [...new Set(rows.flatMap((r) => Object.keys(r.item?.events || {})))].sort();
  const id = `ind-${finess}`;
  return el("section", { class: "hospital", "aria-labelledby": id },
    el("h3", { id, text: `${hospital.name} (FINESS ${finess})` }),
    el("p", { class: "summary", text: `Sur la période : ${edVisits} passage${edVisits > 1 ? "s" : ""} aux urgences, `
      + `médecin traitant prévenu pour ${percent(edVisits ? sum("ed_gp_notified") / edVisits : null)} ; `
      + `messages au médecin traitant remis ${percent(notices ? sum("gp_delivered") / notices : null)}, `
      + `lus ${percent(notices ? sum("gp_read") / notices : null)}.` }),
    barChart(`${id}-events`, "Événements reçus", kinds.map((k) => [k, KIND_NAMES[k] || k, KIND_COLORS[k] || "#5b6878"]),
      rows.map((r) => ({ label: label(r.month), values: kinds.map((k) => r.item?.events[k] || 0),
                         text: String(Object.values(r.item?.events || {}).reduce((a, b) => a + b, 0)) }))),
    barChart(`${id}-ed`, "Passages aux urgences : médecin traitant prévenu par MSSanté", ED_PARTS,
      rows.map((r) => ({ label: label(r.month),
                         values: ED_PARTS.map(([key]) => (key === "notified" ? r.item?.ed_gp_notified
                                                                            : r.item?.ed_not_notified[key]) || 0),
                         text: r.item?.ed_visits ? `${percent(r.item.ed_gp_notified_share)} prév.` : "—" }))),
    barChart(`${id}-receipts`, "Messages au médecin traitant : remis et lus", RECEIPT_PARTS,
      rows.map((r) => ({ label: label(r.month),
                         values: r.item ? [r.item.gp_read, r.item.gp_delivered - r.item.gp_read,
                                           r.item.gp_notices - r.item.gp_delivered] : [0, 0, 0],
                         text: r.item?.gp_notices ? `lus ${percent(r.item.gp_read_share)}` : "—" }))),
    barChart(`${id}-delay`, "Délai médian entre l'admission et la notification", [["median", "Délai médian", "#0b5c8e"]],
      rows.map((r) => ({ label: label(r.month), values: [r.item?.median_minutes_to_notice || 0],
                         text: minutes(r.item?.median_minutes_to_notice ?? null) }))));
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// One horizontal stacked bar per row (a month): `parts` [key, name, colour], each row's `values`
// in that order and a `text` written after its bar. A legend, and the figures as a table.
function barChart(id, title, parts, rows) {
  const max = Math.max(1, ...rows.map((r) => r.values.reduce((a, b) => a + b, 0)));
  const span = CHART.width - CHART.label - CHART.room;
  const height = rows.length * CHART.row + 4;
  const chart = svg("svg", { viewBox: `0 0 ${CHART.width} ${height}`, class: "chart", role: "img",
                             "aria-labelledby": `${id}-title`, "aria-describedby": `${id}-legend` });
  rows.forEach((row, i) => {
    const y = i * CHART.row + 4;
    chart.append(svg("text", { x: CHART.label - 6, y: y + CHART.bar - 3, "text-anchor": "end", class: "chart-label" },
                     row.label));
    let x = CHART.label;
    row.values.forEach((value, p) => {
      if (!value) return;
      const width = (value / max) * span;
      const bar = svg("rect", { x, y, width: Math.max(width, 1), height: CHART.bar, fill: parts[p][2] });
      bar.append(svg("title", {}, `${row.label} · ${parts[p][1]} : ${value}`));
      chart.append(bar);
      x += width;
    });
    chart.append(svg("line", { x1: CHART.label, x2: CHART.label, y1: y - 3, y2: y + CHART.bar + 3, class: "chart-axis" }));
    chart.append(svg("text", { x: x + 5, y: y + CHART.bar - 3, class: "chart-value" }, row.text));
  });
  const legend = el("ul", { id: `${id}-legend`, class: "legend", "aria-label": "Légende" },
    ...parts.map(([, name, colour]) => {
      const swatch = svg("svg", { viewBox: "0 0 10 10", class: "swatch", "aria-hidden": "true" });
      swatch.append(svg("rect", { width: 10, height: 10, fill: colour }));
      return el("li", {}, swatch, name);
    }));
  const table = el("table", { class: "settings" },
    el("caption", { class: "visually-hidden", text: title }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Mois" }),
      ...(parts.length > 1 ? parts : []).map(([, name]) => el("th", { scope: "col", text: name })),
      el("th", { scope: "col", text: parts.length > 1 ? "Synthèse" : parts[0][1] }))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r.label }),
      ...(parts.length > 1 ? r.values.map((v) => el("td", { text: String(v) })) : []), el("td", { text: r.text })))));
  return el("figure", { class: "indicator", "data-chart": id.split("-").at(-1) },
    el("figcaption", { id: `${id}-title`, text: title }), chart, legend,
    el("details", {}, el("summary", { text: "Voir les chiffres" }), table));
}
