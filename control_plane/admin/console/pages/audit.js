// #/audit: GET /audit with filters (action, actor, since) and cursor pagination.

import * as api from "../api.js";
import { h, field, select, replace, fmtTime } from "../dom.js";

const ACTIONS = ["", "key.create", "key.update", "key.revoke", "key.rotate", "policy.push", "admin_key.create", "admin_key.revoke", "admin.sign_in", "admin.sign_in_failed", "policy.accepted"];
const SINCE = [["", "Any time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]];
const PAGE_SIZE = 50;

export function render(container, ctx) {
  const state = { cursors: [null], page: 0, filters: {} };
  const action = h("input", { type: "text", name: "action", list: "audit-actions", autocomplete: "off", placeholder: "any" });
  const actor = h("input", { type: "text", name: "actor", autocomplete: "off", placeholder: "e.g. admin:abcd2345" });
  const since = select(SINCE, "24h", { name: "since" });
  const form = h("form", { class: "filters card", role: "search", "aria-label": "Audit filters" }, [
    field("Action", action),
    h("datalist", { id: "audit-actions" }, ACTIONS.filter(Boolean).map((a) => h("option", { value: a }))),
    field("Actor", actor),
    field("Since", since),
    h("div", { class: "filter-buttons" }, [
      h("button", { type: "submit", class: "button primary", text: "Apply filters" }),
      h("button", { type: "reset", class: "button ghost", text: "Clear" }),
    ]),
  ]);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  form.addEventListener("reset", () => setTimeout(() => {
    since.value = "24h";
    apply();
  }));

  const error = h("div", { class: "notice error", role: "alert", hidden: true });
  const tableHolder = h("div", { class: "table-wrap card" });
  const prev = h("button", { type: "button", class: "button", text: "← Newer", onclick: () => turn(-1) });
  const next = h("button", { type: "button", class: "button", text: "Older →", onclick: () => turn(1) });
  const pageInfo = h("span", { class: "page-info" });
  const pager = h("nav", { class: "pager", "aria-label": "Audit pages" }, [prev, pageInfo, next]);
  container.append(h("div", { class: "page-head" }, [h("div", {}, [h("h1", { text: "Audit" }), h("p", { class: "hint", text: "Every change made through the Admin API, newest first." })])]), form, error, tableHolder, pager);

  function apply() {
    state.filters = { action: action.value.trim(), actor: actor.value.trim(), since: since.value };
    state.cursors = [null];
    state.page = 0;
    load();
  }
  function turn(delta) {
    state.page += delta;
    load();
  }

  async function load() {
    error.hidden = true;
    try {
      const data = await api.get("/audit", { ...state.filters, cursor: state.cursors[state.page], limit: PAGE_SIZE });
      if (!ctx.alive()) return;
      state.cursors[state.page + 1] = data.next_cursor || null;
      const rows = data.data || [];
      prev.disabled = state.page === 0;
      next.disabled = !data.next_cursor;
      pageInfo.textContent = `Page ${state.page + 1}`;
      pager.hidden = state.page === 0 && !data.next_cursor;
      if (rows.length === 0) {
        replace(tableHolder, h("p", { class: "empty", text: "No audit entries match these filters." }));
        return;
      }
      replace(
        tableHolder,
        h("table", { class: "data audit-table" }, [
          h("caption", { class: "visually-hidden", text: "Audit entries" }),
          h("thead", {}, h("tr", {}, ["#", "Time", "Actor", "Action", "Target", "Source", "Details"].map((c) => h("th", { scope: "col", text: c })))),
          h(
            "tbody",
            {},
            rows.map((r) =>
              h("tr", {}, [
                h("td", { class: "num", text: r.seq }),
                h("td", { class: "nowrap", text: fmtTime(r.time, { seconds: true }) }),
                h("td", {}, h("code", { text: r.actor || "—" })),
                h("th", { scope: "row" }, h("span", { class: "badge neutral", text: r.action })),
                h("td", {}, h("code", { text: r.target || "—" })),
                h("td", { text: r.source || "—" }),
                h("td", { class: "details-cell" }, details(r.details)),
              ]),
            ),
          ),
        ]),
      );
    } catch (exc) {
      if (!ctx.alive() || exc.status === 401) return;
      error.textContent = `The audit log could not be loaded: ${exc.message}`;
      error.hidden = false;
    }
  }

  apply();
}

function details(value) {
  if (value === null || value === undefined || (typeof value === "object" && Object.keys(value).length === 0)) return "—";
  if (typeof value !== "object") return String(value);
  return h("dl", { class: "kv" }, Object.entries(value).flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })]));
}
