// #/spend: spend and tokens over time per tenant and per model (GET /usage/series), top keys
// (GET /usage?by=key_id), cache savings (cost_avoided_usd). Refreshes every 5 s while the tab is
// visible; the charts keep their DOM so an open table stays open.

import * as api from "../api.js";
import { h, replace, fmtUsd, fmtCompact, fmtInt } from "../dom.js";
import { ChartPanel } from "../charts.js";

const RANGES = {
  "24h": { label: "24 hours", step: "hour", buckets: 24, ms: 3600e3 },
  "7d": { label: "7 days", step: "day", buckets: 7, ms: 86400e3 },
  "30d": { label: "30 days", step: "day", buckets: 30, ms: 86400e3 },
};
const REFRESH_MS = 5000;
let chosenRange = "24h"; // kept across visits to the page
// One colour per tenant / model for the whole visit: the same tenant has the same colour in the
// spend and the tokens chart, and keeps it across refreshes.
const colours = { tenant: new Map(), model: new Map() };
function colourFor(dimension) {
  const map = colours[dimension];
  return (name) => {
    if (!map.has(name)) map.set(name, map.size);
    return map.get(name);
  };
}

export function render(container, ctx) {
  const status = h("p", { class: "refresh-status", id: "spend-updated" });
  const rangeButtons = Object.entries(RANGES).map(([value, range]) =>
    h("button", {
      type: "button",
      class: "segment",
      "data-range": value,
      "aria-pressed": String(value === chosenRange),
      // The visible text starts the accessible name (WCAG 2.5.3), the hidden part spells it out.
      text: value,
      onclick: () => {
        chosenRange = value;
        for (const button of rangeButtons) button.setAttribute("aria-pressed", String(button.dataset.range === value));
        refresh();
      },
    }, h("span", { class: "visually-hidden", text: ` (last ${range.label})` })),
  );
  const picker = h("div", { class: "segmented", role: "group", "aria-label": "Time range" }, rangeButtons);
  const error = h("div", { class: "notice error", role: "alert", hidden: true });

  const kpis = h("div", { class: "kpis" });
  const panels = {
    spendTenant: new ChartPanel({ title: "Spend by tenant", description: "US dollars per period (UTC)" }),
    tokensTenant: new ChartPanel({ title: "Tokens by tenant", description: "Input + output tokens per period" }),
    spendModel: new ChartPanel({ title: "Spend by model", description: "US dollars per period (UTC)" }),
    tokensModel: new ChartPanel({ title: "Tokens by model", description: "Input + output tokens per period" }),
    savings: new ChartPanel({ title: "Cache savings", description: "Cost avoided by the response cache, per period" }),
    topKeys: new ChartPanel({ title: "Top keys by spend", description: "The ten keys that spent the most in the range" }),
  };

  container.append(
    h("div", { class: "page-head" }, [
      h("div", {}, [h("h1", { text: "Spend" }), status]),
      h("div", { class: "toolbar" }, [picker]),
    ]),
    error,
    h("section", { "aria-label": "Totals" }, kpis),
    h("div", { class: "chart-grid" }, Object.values(panels).map((p) => p.element)),
  );

  let inFlight = false;
  async function refresh() {
    if (inFlight || !ctx.alive()) return;
    inFlight = true;
    const rangeKey = chosenRange;
    const range = RANGES[rangeKey];
    try {
      const [byTenant, byModel, total, keys] = await Promise.all([
        api.get("/usage/series", { since: rangeKey, step: range.step, by: "tenant" }),
        api.get("/usage/series", { since: rangeKey, step: range.step, by: "model" }),
        api.get("/usage", { since: rangeKey }),
        api.get("/usage", { since: rangeKey, by: "key_id", limit: 200 }),
      ]);
      if (!ctx.alive() || rangeKey !== chosenRange) return;
      error.hidden = true;
      const buckets = makeBuckets(range, [...byTenant.points, ...byModel.points]);
      const label = range.step === "hour" ? hourLabel : dayShort;
      const labelLong = range.step === "hour" ? hourLong : dayLabel;
      const draw = (panel, points, metric, format, valueName, colorOf, empty) =>
        panel.renderColumns({ buckets, series: toSeries(points, metric, range), format, label, labelLong, valueName, colorOf, empty });
      const tenantColour = colourFor("tenant");
      const modelColour = colourFor("model");
      // Spend first: the biggest spenders get the first colours.
      draw(panels.spendTenant, byTenant.points, (p) => p.cost_usd, fmtUsd, "spend", tenantColour);
      draw(panels.tokensTenant, byTenant.points, tokens, fmtCompact, "tokens", tenantColour);
      draw(panels.spendModel, byModel.points, (p) => p.cost_usd, fmtUsd, "spend", modelColour);
      draw(panels.tokensModel, byModel.points, tokens, fmtCompact, "tokens", modelColour);
      draw(panels.savings, byTenant.points.map((p) => ({ ...p, series: "cost avoided" })), (p) => p.cost_avoided_usd, fmtUsd, "cost avoided", () => 0, "No cache savings in this range.");
      renderKpis(kpis, total.total || sumRows(total.rows || []));
      const top = (keys.rows || [])
        .map((row) => ({
          label: keyLabel(row.group),
          value: Number(row.cost_usd) || 0,
          extra: [fmtInt(row.requests), fmtCompact((row.input_tokens || 0) + (row.output_tokens || 0)), fmtUsd(row.cost_avoided_usd)],
          requests: row.requests,
        }))
        .filter((row) => row.value > 0 || row.requests > 0)
        .sort((a, b) => b.value - a.value)
        .slice(0, 10);
      panels.topKeys.renderBars({ rows: top, format: fmtUsd, valueName: "Spend", columns: ["Requests", "Tokens", "Cache savings"] });
      status.textContent = `Last ${range.label} · updated ${new Date().toLocaleTimeString([], { hour12: false })} · refreshes every 5 s`;
    } catch (exc) {
      if (!ctx.alive() || exc.status === 401) return;
      error.textContent = `Usage could not be loaded: ${exc.message}`;
      error.hidden = false;
    } finally {
      inFlight = false;
    }
  }

  refresh();
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_MS);
  const onVisible = () => {
    if (document.visibilityState === "visible") refresh();
  };
  document.addEventListener("visibilitychange", onVisible);
  return () => {
    clearInterval(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}

const tokens = (p) => (Number(p.input_tokens) || 0) + (Number(p.output_tokens) || 0);

function keyLabel(group) {
  if (!group) return "(none)";
  return group.key_id || group.key || "(no key)";
}

function sumRows(rows) {
  const total = { requests: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, cost_avoided_usd: 0, cache_hits: 0, errors: 0 };
  for (const row of rows) for (const name of Object.keys(total)) total[name] += Number(row[name]) || 0;
  return total;
}

function renderKpis(holder, total) {
  const tile = (label, value, sub) =>
    h("div", { class: "kpi card" }, [h("div", { class: "kpi-label", text: label }), h("div", { class: "kpi-value", text: value }), sub ? h("div", { class: "kpi-sub", text: sub }) : null]);
  const requests = Number(total.requests) || 0;
  replace(
    holder,
    tile("Spend", fmtUsd(total.cost_usd || 0)),
    tile("Requests", fmtInt(requests), total.errors ? `${fmtInt(total.errors)} errors` : "no errors"),
    tile("Tokens", fmtCompact((total.input_tokens || 0) + (total.output_tokens || 0)), `${fmtCompact(total.input_tokens || 0)} in · ${fmtCompact(total.output_tokens || 0)} out`),
    tile("Cache savings", fmtUsd(total.cost_avoided_usd || 0), `${fmtInt(total.cache_hits || 0)} cache hits`),
  );
}

function floorTo(ms, range) {
  return Math.floor(ms / range.ms) * range.ms;
}

// Every period of the range (so empty hours show as gaps), plus any the API returned outside it.
function makeBuckets(range, points) {
  const end = floorTo(Date.now(), range);
  const set = new Set();
  for (let i = range.buckets - 1; i >= 0; i -= 1) set.add(end - i * range.ms);
  for (const p of points) {
    const t = Date.parse(p.t);
    if (!Number.isNaN(t)) set.add(floorTo(t, range));
  }
  return [...set].sort((a, b) => a - b);
}

function toSeries(points, metric, range) {
  const byName = new Map();
  for (const p of points) {
    const t = Date.parse(p.t);
    if (Number.isNaN(t)) continue;
    const name = p.series === null || p.series === undefined || p.series === "" ? "(none)" : String(p.series);
    if (!byName.has(name)) byName.set(name, { name, values: new Map(), total: 0 });
    const one = byName.get(name);
    const v = Number(metric(p)) || 0;
    const b = floorTo(t, range);
    one.values.set(b, (one.values.get(b) || 0) + v);
    one.total += v;
  }
  // Biggest first, so the palette's first colours go to what matters most.
  return [...byName.values()].filter((one) => one.total > 0).sort((a, b) => b.total - a.total);
}

const pad = (n) => String(n).padStart(2, "0");
function hourLabel(ms) {
  const d = new Date(ms);
  return `${pad(d.getUTCHours())}:00`;
}
function hourLong(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:00`;
}
function dayShort(ms) {
  const d = new Date(ms);
  return `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}
function dayLabel(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}
