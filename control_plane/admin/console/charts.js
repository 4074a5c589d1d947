// Charts as inline SVG built here (no chart library): stacked columns over time and horizontal
// bars. Every chart sits in a <figure> with a text description for screen readers and a table
// alternative in a <details> below it. Colours come from CSS classes (series-0..7), not inline
// styles; the legend and the table carry the series names, so colour is never the only cue.

import { h, s, clear, nextId } from "./dom.js";

const W = 600;
const H = 230;
const M = { top: 12, right: 12, bottom: 30, left: 64 };
const PALETTE_SIZE = 8;

function niceStep(max, ticks) {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  const nice = unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10;
  return nice * power;
}

function scaleMax(max) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const step = niceStep(max, 4);
  return { top: Math.ceil(max / step) * step, step };
}

// A chart panel that keeps its DOM (so an open table stays open) across refreshes.
export class ChartPanel {
  constructor({ title, description = "", className = "" }) {
    this.titleId = nextId("chart-title");
    this.descId = nextId("chart-desc");
    this.title = title;
    this.description = description;
    this.graphic = h("div", { class: "chart-graphic" });
    this.legend = h("ul", { class: "legend", "aria-label": `${title}: legend` });
    this.tableHolder = h("div", { class: "table-wrap" });
    this.details = h("details", { class: "chart-table" }, [h("summary", { text: "Show as table" }), this.tableHolder]);
    this.element = h("figure", { class: ["card", "chart", className] }, [
      h("figcaption", {}, [h("h3", { id: this.titleId, text: title }), description ? h("p", { class: "hint", text: description }) : null]),
      this.graphic,
      this.legend,
      this.details,
    ]);
  }

  setEmpty(message) {
    clear(this.graphic).append(h("p", { class: "empty", text: message }));
    clear(this.legend);
    clear(this.tableHolder).append(h("p", { class: "empty", text: message }));
  }

  // buckets: [ms]; series: [{name, values: Map(ms -> number)}]; format(n) -> text; label(ms) -> text
  renderColumns({ buckets, series, format, label, labelLong, valueName, colorOf = (name, k) => k, empty = "No usage in this range." }) {
    const totals = buckets.map((b) => series.reduce((sum, one) => sum + (one.values.get(b) || 0), 0));
    const grand = totals.reduce((a, b) => a + b, 0);
    if (series.length === 0 || grand === 0) {
      this.setEmpty(empty);
      return;
    }
    const { top, step } = scaleMax(Math.max(...totals));
    const plotW = W - M.left - M.right;
    const plotH = H - M.top - M.bottom;
    const slot = plotW / buckets.length;
    const barW = Math.max(1, Math.min(slot * 0.72, 36));
    const y = (v) => M.top + plotH - (v / top) * plotH;

    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`,
      class: "chart-svg",
      role: "img",
      "aria-labelledby": `${this.titleId} ${this.descId}`,
      preserveAspectRatio: "xMidYMid meet",
    });
    svg.append(
      s("desc", {
        id: this.descId,
        text: `Stacked columns of ${valueName} over ${buckets.length} periods for ${series.length} series; total ${format(grand)}. The table below has every value.`,
      }),
    );
    const grid = s("g", { class: "grid", "aria-hidden": "true" });
    for (let v = 0; v <= top + step / 2; v += step) {
      grid.append(s("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }));
      grid.append(s("text", { x: M.left - 6, y: y(v) + 4, class: "axis-label", "text-anchor": "end", text: format(v) }));
    }
    svg.append(grid);
    const every = Math.max(1, Math.ceil(buckets.length / 6));
    const axis = s("g", { class: "axis", "aria-hidden": "true" });
    axis.append(s("line", { x1: M.left, x2: W - M.right, y1: y(0), y2: y(0) }));
    buckets.forEach((b, i) => {
      if (i % every !== 0) return;
      const x = M.left + slot * i + slot / 2;
      axis.append(s("text", { x, y: H - 10, class: "axis-label", "text-anchor": "middle", text: label(b) }));
    });
    svg.append(axis);
    const bars = s("g", { class: "bars" });
    buckets.forEach((b, i) => {
      let base = 0;
      const x = M.left + slot * i + (slot - barW) / 2;
      series.forEach((one, k) => {
        const v = one.values.get(b) || 0;
        if (v <= 0) return;
        const y0 = y(base);
        const y1 = y(base + v);
        base += v;
        bars.append(
          s(
            "rect",
            { x, y: y1, width: barW, height: Math.max(0.5, y0 - y1), class: `series-${colorOf(one.name, k) % PALETTE_SIZE}` },
            s("title", { text: `${one.name} · ${labelLong(b)} · ${format(v)}` }),
          ),
        );
      });
    });
    svg.append(bars);
    clear(this.graphic).append(svg);

    this.renderLegend(series.map((one) => one.name), colorOf);

    const rows = buckets
      .map((b, i) => ({ b, total: totals[i] }))
      .filter((row) => row.total > 0)
      .map(({ b, total }) =>
        h("tr", {}, [
          h("th", { scope: "row", text: labelLong(b) }),
          series.map((one) => h("td", { class: "num", text: format(one.values.get(b) || 0) })),
          h("td", { class: "num", text: format(total) }),
        ]),
      );
    const table = h("table", { class: "data" }, [
      h("caption", { class: "visually-hidden", text: `${this.title} (table)` }),
      h("thead", {}, h("tr", {}, [h("th", { scope: "col", text: "Period (UTC)" }), series.map((one) => h("th", { scope: "col", class: "num", text: one.name })), h("th", { scope: "col", class: "num", text: "Total" })])),
      h("tbody", {}, rows),
    ]);
    clear(this.tableHolder).append(table);
  }

  renderLegend(names, colorOf = (name, k) => k) {
    clear(this.legend);
    names.forEach((name, k) => {
      this.legend.append(
        h("li", {}, [
          s("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true", focusable: "false" }, s("rect", { width: 12, height: 12, rx: 2, class: `series-${colorOf(name, k) % PALETTE_SIZE}` })),
          h("span", { text: name }),
        ]),
      );
    });
  }

  // rows: [{label, value, extra: [[heading, text]...]}] sorted; format(n) -> text
  renderBars({ rows, format, valueName, columns = [] }) {
    if (rows.length === 0) {
      this.setEmpty("No usage in this range.");
      return;
    }
    const rowH = 26;
    const labelW = 170;
    const height = rows.length * rowH + 8;
    const plotW = W - labelW - 90;
    const max = Math.max(...rows.map((r) => r.value)) || 1;
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${height}`,
      class: "chart-svg bars-svg",
      role: "img",
      "aria-labelledby": `${this.titleId} ${this.descId}`,
    });
    svg.append(s("desc", { id: this.descId, text: `Horizontal bars of ${valueName} for ${rows.length} items; the table below has every value.` }));
    rows.forEach((row, i) => {
      const yTop = 4 + i * rowH;
      const width = Math.max(1, (row.value / max) * plotW);
      const g = s("g", {});
      g.append(s("text", { x: labelW - 8, y: yTop + 16, class: "bar-label", "text-anchor": "end", text: truncate(row.label, 24) }));
      g.append(s("rect", { x: labelW, y: yTop + 3, width, height: rowH - 8, rx: 2, class: "series-0" }, s("title", { text: `${row.label}: ${format(row.value)}` })));
      g.append(s("text", { x: labelW + width + 6, y: yTop + 16, class: "bar-value", text: format(row.value) }));
      svg.append(g);
    });
    clear(this.graphic).append(svg);
    clear(this.legend);
    const table = h("table", { class: "data" }, [
      h("caption", { class: "visually-hidden", text: `${this.title} (table)` }),
      h("thead", {}, h("tr", {}, [h("th", { scope: "col", text: "Key" }), h("th", { scope: "col", class: "num", text: valueName }), columns.map((c) => h("th", { scope: "col", class: "num", text: c }))])),
      h("tbody", {}, rows.map((row) => h("tr", {}, [h("th", { scope: "row", text: row.label }), h("td", { class: "num", text: format(row.value) }), (row.extra || []).map((text) => h("td", { class: "num", text }))]))),
    ]);
    clear(this.tableHolder).append(table);
  }
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
