// #/health: GET /status. Each cluster's state is a colour AND a word AND a shape (never colour
// alone); gateways with the version they acknowledged; policy version; cache hit ratio; ledger lag.
// Refreshes every 5 s while visible.

import * as api from "../api.js";
import { h, s, replace, fmtTime, fmtPercent, fmtInt, shortVersion } from "../dom.js";

const STATES = {
  green: { label: "Healthy", kind: "ok" },
  amber: { label: "Degraded", kind: "warn" },
  red: { label: "Down", kind: "bad" },
};

export function render(container, ctx) {
  const updated = h("p", { class: "refresh-status" });
  const error = h("div", { class: "notice error", role: "alert", hidden: true });
  const summary = h("div", { class: "kpis" });
  const clusters = h("div", { class: "table-wrap card" });
  const gateways = h("div", { class: "table-wrap card" });
  container.append(
    h("div", { class: "page-head" }, [h("div", {}, [h("h1", { text: "Health" }), updated])]),
    error,
    h("section", { "aria-label": "Summary" }, summary),
    h("section", { "aria-labelledby": "clusters-h" }, [h("h2", { id: "clusters-h", text: "Clusters" }), clusters]),
    h("section", { "aria-labelledby": "gateways-h" }, [h("h2", { id: "gateways-h", text: "Gateways" }), gateways]),
  );

  async function refresh() {
    try {
      const status = await api.get("/status");
      if (!ctx.alive()) return;
      error.hidden = true;
      draw(status);
      updated.textContent = `Updated ${new Date().toLocaleTimeString([], { hour12: false })} · refreshes every 5 s`;
    } catch (exc) {
      if (!ctx.alive() || exc.status === 401) return;
      error.textContent = `Status could not be loaded: ${exc.message}`;
      error.hidden = false;
    }
  }

  function draw(status) {
    const policy = status.policy || {};
    const cache = status.cache || {};
    const ledger = status.ledger || {};
    const list = status.clusters || [];
    const counts = { green: 0, amber: 0, red: 0 };
    for (const c of list) counts[c.state] = (counts[c.state] || 0) + 1;
    const lag = ledger.lag_seconds;
    const lagKind = lag === null || lag === undefined ? "" : lag > 300 ? "bad" : lag > 30 ? "warn" : "ok";
    const tile = (label, value, sub, kind) =>
      h("div", { class: ["kpi card", kind && `kpi-${kind}`] }, [h("div", { class: "kpi-label", text: label }), h("div", { class: "kpi-value", text: value }), sub ? h("div", { class: "kpi-sub", text: sub }) : null]);
    replace(
      summary,
      tile("Policy version", shortVersion(policy.version), policy.accepted_at ? `generation ${policy.generation ?? "—"} · accepted ${fmtTime(policy.accepted_at)}` : `generation ${policy.generation ?? "—"}`),
      tile("Clusters", `${counts.green} healthy`, `${counts.amber} degraded · ${counts.red} down`, counts.red ? "bad" : counts.amber ? "warn" : "ok"),
      tile("Cache hit ratio", fmtPercent(cache.hit_ratio), cache.hit_ratio === null || cache.hit_ratio === undefined ? "no cached traffic yet" : "responses served from the cache"),
      tile("Ledger lag", lag === null || lag === undefined ? "—" : `${Number(lag).toFixed(1)} s`, lag === null || lag === undefined ? "no ledger lag reported" : "oldest usage record not yet stored", lagKind),
    );

    if (list.length === 0) replace(clusters, h("p", { class: "empty", text: "No clusters reported." }));
    else
      replace(
        clusters,
        h("table", { class: "data" }, [
          h("caption", { class: "visually-hidden", text: "Clusters" }),
          h("thead", {}, h("tr", {}, ["Cluster", "State", "Hosts", "Healthy", "Ejected", "Circuit breaker (requests left)"].map((c, i) => h("th", { scope: "col", class: i > 1 ? "num" : null, text: c })))),
          h(
            "tbody",
            {},
            list.map((c) => {
              const cb = (c.circuit_breaker && c.circuit_breaker.requests) || {};
              return h("tr", {}, [
                h("th", { scope: "row", text: c.name }),
                h("td", {}, stateBadge(c.state)),
                h("td", { class: "num", text: fmtInt(c.hosts) }),
                h("td", { class: "num", text: fmtInt(c.healthy) }),
                h("td", { class: "num", text: fmtInt(c.ejected) }),
                h("td", { class: "num", text: cb.maximum !== undefined ? `${fmtInt(cb.remaining)} of ${fmtInt(cb.maximum)}` : "—" }),
              ]);
            }),
          ),
        ]),
      );

    const gws = status.gateways || [];
    if (gws.length === 0) replace(gateways, h("p", { class: "empty", text: "No gateway has connected to this control plane." }));
    else
      replace(
        gateways,
        h("table", { class: "data" }, [
          h("caption", { class: "visually-hidden", text: "Gateways" }),
          h("thead", {}, h("tr", {}, ["Node", "Acknowledged generation", "Sync"].map((c) => h("th", { scope: "col", text: c })))),
          h(
            "tbody",
            {},
            gws.map((g) => {
              // acked_version is the xDS generation the node ACKed (the policy's "generation").
              const acked = g.acked_version === null || g.acked_version === undefined ? null : String(g.acked_version);
              const inSync = !g.nacked && acked !== null && (acked === String(policy.generation) || acked === String(policy.version));
              const badge = g.nacked ? stateBadge("red", `Rejected: ${g.nacked}`) : inSync ? stateBadge("green", "In sync") : stateBadge("amber", "Behind");
              return h("tr", {}, [h("th", { scope: "row", text: g.node }), h("td", {}, h("code", { text: acked ?? "—" })), h("td", {}, badge)]);
            }),
          ),
        ]),
      );
  }

  refresh();
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, 5000);
  return () => clearInterval(timer);
}

// A state as a badge: a shape (circle / triangle / square), a word and a colour.
export function stateBadge(state, text) {
  const known = STATES[state] || { label: state || "unknown", kind: "neutral" };
  const shape =
    known.kind === "ok"
      ? s("circle", { cx: 6, cy: 6, r: 5 })
      : known.kind === "warn"
        ? s("path", { d: "M6 1 L11 11 L1 11 Z" })
        : s("rect", { x: 1, y: 1, width: 10, height: 10 });
  return h("span", { class: ["badge", known.kind], "data-state": state }, [
    s("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true", focusable: "false", class: "badge-icon" }, shape),
    text || known.label,
  ]);
}
