// #/keys: the virtual keys clients present. List with a tenant filter and cursor pagination;
// create (the secret shown once, in its dialog, then dropped); edit limits (PATCH; an empty field
// clears the limit); revoke after a confirmation; rotate (the new secret shown once). Actions the
// principal's role cannot do are not offered (the server refuses them anyway).

import * as api from "../api.js";
import { h, field, select, replace, fmtTime, fmtUsd, fmtInt } from "../dom.js";
import { openDialog, confirmDialog } from "../dialog.js";

const LIMITS = [
  ["rpm", "Requests per minute"],
  ["rph", "Requests per hour"],
  ["rpd", "Requests per day"],
  ["tpm", "Tokens per minute"],
  ["tpd", "Tokens per day"],
  ["max_parallel", "Parallel requests"],
];
const PERIODS = [["", "No reset (lifetime)"], ["day", "Per day"], ["week", "Per week"], ["month", "Per month"]];
const EXPIRY = [["", "Never"], ["86400", "1 day"], ["604800", "7 days"], ["2592000", "30 days"], ["7776000", "90 days"], ["31536000", "1 year"]];
const PAGE_SIZE = 25;

export function render(container, ctx) {
  const principal = ctx.principal;
  const scoped = principal.role === "tenant-admin";
  const state = { tenant: scoped ? principal.tenant : "", cursors: [null], page: 0, tenants: [] };

  const tenantFilter = select([["", "All tenants"]], "", { name: "tenant" });
  const filterField = field("Tenant", tenantFilter);
  if (scoped) filterField.hidden = true;
  tenantFilter.addEventListener("change", () => {
    state.tenant = tenantFilter.value;
    state.cursors = [null];
    state.page = 0;
    load();
  });

  const createButton = api.may("keys.create")
    ? h("button", { type: "button", class: "button primary", text: "Create key", onclick: () => createDialog() })
    : null;
  const error = h("div", { class: "notice error", role: "alert", hidden: true });
  const tableHolder = h("div", { class: "table-wrap card" });
  const prev = h("button", { type: "button", class: "button", text: "← Previous", onclick: () => turn(-1) });
  const next = h("button", { type: "button", class: "button", text: "Next →", onclick: () => turn(1) });
  const pageInfo = h("span", { class: "page-info" });
  const pager = h("nav", { class: "pager", "aria-label": "Keys pages" }, [prev, pageInfo, next]);

  container.append(
    h("div", { class: "page-head" }, [
      h("div", {}, [
        h("h1", { text: "Keys" }),
        h("p", { class: "hint", text: scoped ? `Keys of tenant ${principal.tenant}.` : "Virtual keys that clients present to the gateway." }),
      ]),
      h("div", { class: "toolbar" }, [filterField, createButton]),
    ]),
    error,
    tableHolder,
    pager,
  );

  async function loadTenants() {
    if (scoped) return;
    try {
      const data = await api.get("/tenants");
      state.tenants = (data.data || []).map((t) => t.name);
      if (!ctx.alive()) return;
      const current = tenantFilter.value;
      replace(tenantFilter, h("option", { value: "", text: "All tenants" }), state.tenants.map((name) => h("option", { value: name, text: name, selected: name === current })));
    } catch {
      // the filter stays with "All tenants"; the list itself reports errors
    }
  }

  function turn(delta) {
    state.page += delta;
    load();
  }

  async function load() {
    error.hidden = true;
    tableHolder.setAttribute("aria-busy", "true");
    try {
      const data = await api.get("/keys", { tenant: state.tenant, cursor: state.cursors[state.page], limit: PAGE_SIZE });
      if (!ctx.alive()) return;
      state.cursors[state.page + 1] = data.next_cursor || null;
      renderTable(data.data || []);
      prev.disabled = state.page === 0;
      next.disabled = !data.next_cursor;
      pageInfo.textContent = `Page ${state.page + 1}`;
      pager.hidden = state.page === 0 && !data.next_cursor;
    } catch (exc) {
      if (!ctx.alive() || exc.status === 401) return;
      error.textContent = `Keys could not be loaded: ${exc.message}`;
      error.hidden = false;
    } finally {
      tableHolder.removeAttribute("aria-busy");
    }
  }

  function renderTable(keys) {
    if (keys.length === 0) {
      replace(tableHolder, h("p", { class: "empty", text: state.tenant ? `No keys for tenant ${state.tenant}.` : "No keys yet." }));
      return;
    }
    const canEdit = api.may("keys.update");
    const canRevoke = api.may("keys.revoke");
    const canRotate = api.may("keys.rotate");
    const rows = keys.map((key) => {
      const active = key.state === "active";
      const actions = [];
      if (canEdit && key.state !== "revoked") actions.push(h("button", { type: "button", class: "button small", text: "Edit limits", "aria-label": `Edit limits of ${key.name}`, onclick: () => editDialog(key) }));
      if (canRotate && active) actions.push(h("button", { type: "button", class: "button small", text: "Rotate", "aria-label": `Rotate ${key.name}`, onclick: () => rotate(key) }));
      if (canRevoke && key.state !== "revoked") actions.push(h("button", { type: "button", class: "button small danger-outline", text: "Revoke", "aria-label": `Revoke ${key.name}`, onclick: () => revoke(key) }));
      return h("tr", { "data-key-id": key.id }, [
        h("th", { scope: "row" }, [h("div", { class: "key-name", text: key.name }), h("code", { class: "key-id", text: key.id })]),
        h("td", { text: key.tenant }),
        h("td", {}, stateBadge(key.state)),
        h("td", { text: key.models && key.models.length ? key.models.join(", ") : "all" }),
        h("td", { text: limitsText(key) }),
        h("td", { text: key.budget_usd === null || key.budget_usd === undefined ? "—" : `${fmtUsd(key.budget_usd)}${key.budget_period ? ` / ${key.budget_period}` : ""}` }),
        h("td", { text: fmtTime(key.created_at) }),
        h("td", { text: key.expires_at ? fmtTime(key.expires_at) : "never" }),
        h("td", { class: "actions" }, actions.length ? actions : h("span", { class: "muted", text: "—" })),
      ]);
    });
    replace(
      tableHolder,
      h("table", { class: "data keys-table" }, [
        h("caption", { class: "visually-hidden", text: "Keys" }),
        h("thead", {}, h("tr", {}, ["Name / id", "Tenant", "State", "Models", "Limits", "Budget", "Created", "Expires", "Actions"].map((c) => h("th", { scope: "col", text: c })))),
        h("tbody", {}, rows),
      ]),
    );
  }

  function tenantControl(value) {
    if (scoped) return h("input", { type: "text", name: "tenant", value: principal.tenant, readOnly: true });
    const input = h("input", { type: "text", name: "tenant", value: value || state.tenant || "", required: true, list: "tenant-options", autocomplete: "off" });
    return input;
  }

  function limitFields(key = {}) {
    const inputs = {};
    const fields = LIMITS.map(([name, label]) => {
      inputs[name] = h("input", { type: "number", name, min: "0", step: "1", inputmode: "numeric", value: key[name] ?? "" });
      return field(label, inputs[name]);
    });
    inputs.budget_usd = h("input", { type: "number", name: "budget_usd", min: "0", step: "0.01", inputmode: "decimal", value: key.budget_usd ?? "" });
    inputs.budget_period = select(PERIODS, key.budget_period || "", { name: "budget_period" });
    inputs.models = h("input", { type: "text", name: "models", value: (key.models || []).join(", "), autocomplete: "off" });
    return {
      inputs,
      nodes: [
        h("fieldset", { class: "grid-fields" }, [h("legend", { text: "Rate limits (empty: no limit)" }), fields]),
        h("fieldset", { class: "grid-fields" }, [
          h("legend", { text: "Budget" }),
          field("Budget (USD)", inputs.budget_usd),
          field("Budget period", inputs.budget_period),
        ]),
        field("Models", inputs.models, "Comma-separated model names this key may use; empty: every model."),
      ],
    };
  }

  function readLimits(inputs, { onlyChanged, original = {} } = {}) {
    const body = {};
    const problems = [];
    for (const [name, label] of LIMITS) {
      const raw = inputs[name].value.trim();
      let value = null;
      if (raw !== "") {
        value = Number(raw);
        if (!Number.isInteger(value) || value < 0) problems.push([inputs[name], `${label} must be a whole number.`]);
      }
      body[name] = value;
    }
    const budget = inputs.budget_usd.value.trim();
    body.budget_usd = budget === "" ? null : Number(budget);
    if (budget !== "" && !(body.budget_usd >= 0)) problems.push([inputs.budget_usd, "Budget must be a positive amount."]);
    body.budget_period = inputs.budget_period.value || null;
    if (body.budget_period && body.budget_usd === null) problems.push([inputs.budget_period, "A budget period needs a budget."]);
    const models = inputs.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    body.models = models.length ? models : null;
    if (onlyChanged) {
      for (const name of Object.keys(body)) {
        const before = original[name] ?? null;
        const same = Array.isArray(before) || Array.isArray(body[name])
          ? JSON.stringify(before && before.length ? before : null) === JSON.stringify(body[name])
          : before === body[name];
        if (same) delete body[name];
      }
    } else {
      for (const name of Object.keys(body)) if (body[name] === null) delete body[name];
    }
    return { body, problems };
  }

  function showProblems(holder, problems) {
    for (const input of holder.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    if (problems.length === 0) return false;
    for (const [input] of problems) input.setAttribute("aria-invalid", "true");
    problems[0][0].focus();
    return true;
  }

  function createDialog() {
    if (ctx.needsFreshSession()) return;
    const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off", maxlength: "100" });
    const tenant = tenantControl();
    const expires = select(EXPIRY, "", { name: "expires" });
    const limits = limitFields();
    const formError = h("div", { class: "notice error", role: "alert", hidden: true });
    const datalist = h("datalist", { id: "tenant-options" }, state.tenants.map((t) => h("option", { value: t })));
    const form = h("form", { class: "dialog-form", novalidate: true, id: "create-key-form" }, [
      field("Name", name, "What this key is for, e.g. ci-bot or alice-laptop."),
      field("Tenant", tenant),
      datalist,
      field("Expires", expires),
      limits.nodes,
      formError,
    ]);
    const cancel = h("button", { type: "button", class: "button", text: "Cancel", onclick: () => dlg.close() });
    const submit = h("button", { type: "submit", class: "button primary", text: "Create key", form: "create-key-form" });
    const dlg = openDialog({ title: "Create a key", body: form, actions: [cancel, submit], initialFocus: name });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      formError.hidden = true;
      const { body, problems } = readLimits(limits.inputs);
      if (!name.value.trim()) problems.unshift([name, "Enter a name."]);
      if (!tenant.value.trim()) problems.unshift([tenant, "Enter a tenant."]);
      if (showProblems(form, problems)) {
        formError.textContent = problems.map((p) => p[1]).join(" ");
        formError.hidden = false;
        return;
      }
      body.name = name.value.trim();
      body.tenant = tenant.value.trim();
      if (expires.value) body.expires_in_seconds = Number(expires.value);
      submit.disabled = true;
      try {
        const created = await api.post("/keys", body);
        showSecret(dlg, created, "Key created");
        load();
        loadTenants();
      } catch (exc) {
        if (exc.status === 401) return;
        formError.textContent = describe(exc);
        formError.hidden = false;
        submit.disabled = false;
      }
    });
  }

  // The only place a secret is ever rendered: the dialog right after create/rotate. Closing the
  // dialog removes it from the DOM and from this closure.
  function showSecret(dlg, created, title) {
    let secret = created.key;
    const record = created.record || {};
    const box = h("input", { type: "text", class: "secret", readOnly: true, value: secret, "aria-describedby": "secret-warning", spellcheck: "false", autocomplete: "off" });
    const copied = h("span", { class: "copied", role: "status" });
    const copy = h("button", {
      type: "button",
      class: "button primary",
      text: "Copy key",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(secret);
        } catch {
          box.select();
          document.execCommand("copy");
        }
        copied.textContent = "Copied to the clipboard.";
      },
    });
    dlg.heading.textContent = title;
    replace(
      dlg.body,
      h("p", { class: "notice warning", id: "secret-warning" }, [
        h("strong", { text: "Copy this key now. " }),
        "It is shown only this once and cannot be shown again: only a hash of it is stored. If you lose it, rotate or revoke the key.",
      ]),
      field(`Key for ${record.name || ""} (tenant ${record.tenant || ""}, id ${record.id || ""})`, box),
      h("div", { class: "copy-row" }, [copy, copied]),
    );
    const done = h("button", { type: "button", class: "button", text: "I have stored it", onclick: () => dlg.close() });
    dlg.setActions(done);
    dlg.element.addEventListener("close", () => {
      secret = null;
      box.value = "";
    });
    copy.focus();
  }

  function editDialog(key) {
    if (ctx.needsFreshSession()) return;
    const limits = limitFields(key);
    const formError = h("div", { class: "notice error", role: "alert", hidden: true });
    const form = h("form", { class: "dialog-form", novalidate: true, id: "edit-key-form" }, [
      h("p", { class: "hint" }, ["Key ", h("code", { text: key.id }), ` (${key.name}, tenant ${key.tenant}). Empty a field to clear that limit.`]),
      limits.nodes,
      formError,
    ]);
    const cancel = h("button", { type: "button", class: "button", text: "Cancel", onclick: () => dlg.close() });
    const submit = h("button", { type: "submit", class: "button primary", text: "Save limits", form: "edit-key-form" });
    const dlg = openDialog({ title: `Edit limits: ${key.name}`, body: form, actions: [cancel, submit] });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      formError.hidden = true;
      const { body, problems } = readLimits(limits.inputs, { onlyChanged: true, original: key });
      if (showProblems(form, problems)) {
        formError.textContent = problems.map((p) => p[1]).join(" ");
        formError.hidden = false;
        return;
      }
      if (Object.keys(body).length === 0) {
        dlg.close();
        ctx.notify("Nothing changed.");
        return;
      }
      submit.disabled = true;
      try {
        await api.patch(`/keys/${encodeURIComponent(key.id)}`, body);
        dlg.close();
        ctx.notify(`Limits of ${key.name} saved.`, "success");
        load();
      } catch (exc) {
        if (exc.status === 401) return;
        formError.textContent = describe(exc);
        formError.hidden = false;
        submit.disabled = false;
      }
    });
  }

  async function revoke(key) {
    if (ctx.needsFreshSession()) return;
    const ok = await confirmDialog({
      title: "Revoke this key?",
      message: [
        h("p", {}, ["Revoke ", h("strong", { text: key.name }), " (", h("code", { text: key.id }), `, tenant ${key.tenant})?`]),
        h("p", { text: "Every request with it is refused from now on. This cannot be undone." }),
      ],
      confirmLabel: "Revoke key",
      danger: true,
    });
    if (!ok) return;
    try {
      await api.post(`/keys/${encodeURIComponent(key.id)}/revoke`);
      ctx.notify(`Key ${key.name} revoked.`, "success");
      load();
    } catch (exc) {
      if (exc.status !== 401) ctx.notify(`Revoke failed: ${describe(exc)}`, "error");
    }
  }

  async function rotate(key) {
    if (ctx.needsFreshSession()) return;
    const grace = select([["0", "None: the old secret stops now"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"]], "86400", { name: "grace" });
    const formError = h("div", { class: "notice error", role: "alert", hidden: true });
    const form = h("form", { class: "dialog-form", novalidate: true, id: "rotate-key-form" }, [
      h("p", {}, ["A new secret for ", h("strong", { text: key.name }), " (", h("code", { text: key.id }), "). The old one keeps working for the grace period."]),
      field("Grace period", grace),
      formError,
    ]);
    const cancel = h("button", { type: "button", class: "button", text: "Cancel", onclick: () => dlg.close() });
    const submit = h("button", { type: "submit", class: "button primary", text: "Rotate key", form: "rotate-key-form" });
    const dlg = openDialog({ title: `Rotate ${key.name}`, body: form, actions: [cancel, submit], initialFocus: grace });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      submit.disabled = true;
      try {
        const rotated = await api.post(`/keys/${encodeURIComponent(key.id)}/rotate`, { grace_seconds: Number(grace.value) });
        showSecret(dlg, rotated, "Key rotated");
        load();
      } catch (exc) {
        if (exc.status === 401) return;
        formError.textContent = describe(exc);
        formError.hidden = false;
        submit.disabled = false;
      }
    });
  }

  loadTenants();
  load();
}

function stateBadge(value) {
  const kind = value === "active" ? "ok" : value === "revoked" ? "bad" : "warn";
  return h("span", { class: ["badge", kind], text: value || "unknown" });
}

function limitsText(key) {
  const parts = [];
  for (const [name] of LIMITS) if (key[name] !== null && key[name] !== undefined) parts.push(`${name} ${fmtInt(key[name])}`);
  return parts.length ? parts.join(" · ") : "none";
}

function describe(exc) {
  if (exc.status === 403 && exc.code === "csrf") return "Your session's CSRF token is missing or stale: sign in again.";
  const details = (exc.details || []).map((d) => `${d.path ? `${d.path}: ` : ""}${d.message}`).join("; ");
  return details ? `${exc.message} (${details})` : exc.message;
}
