// #/policy: the current policy YAML in a line-numbered editor; Validate lists errors with their
// line and jumps to (and marks) it; Diff against the current policy; Push with the version it was
// loaded at (expected_version), a 409 conflict said plainly and the edits kept.

import * as api from "../api.js";
import { h, replace, fmtTime, shortVersion } from "../dom.js";
import { confirmDialog } from "../dialog.js";

export function render(container, ctx) {
  const canPush = api.may("policy.push");
  const state = { version: null, original: "", errorLines: new Set(), lineCount: 0 };

  const meta = h("p", { class: "hint", id: "policy-meta", text: "Loading the current policy…" });
  const rejected = h("div", { class: "notice warning", role: "status", hidden: true });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const backdrop = h("div", { class: "backdrop", "aria-hidden": "true" });
  const textarea = h("textarea", {
    id: "policy-yaml",
    class: "code-input",
    wrap: "off",
    spellcheck: "false",
    autocomplete: "off",
    autocapitalize: "off",
    "aria-describedby": "policy-meta policy-dirty",
  });
  const editor = h("div", { class: "editor" }, [gutter, h("div", { class: "code-area" }, [backdrop, textarea])]);
  const cursorInfo = h("span", { class: "cursor-info", "aria-hidden": "true" });
  const dirty = h("span", { class: "dirty", id: "policy-dirty" });
  const results = h("section", { class: "results", "aria-live": "polite", "aria-label": "Results" });

  const validate = h("button", { type: "button", class: "button", text: "Validate", onclick: () => runValidate() });
  const diff = h("button", { type: "button", class: "button", text: "Diff vs current", onclick: () => runDiff() });
  const push = canPush ? h("button", { type: "button", class: "button primary", text: "Push", onclick: () => runPush() }) : null;
  const reload = h("button", { type: "button", class: "button ghost", text: "Reload current", onclick: () => loadCurrent(true) });

  container.append(
    h("div", { class: "page-head" }, [h("div", {}, [h("h1", { text: "Policy" }), meta]), h("div", { class: "toolbar" }, [validate, diff, push, reload])]),
    rejected,
    h("div", { class: "card editor-card" }, [
      h("label", { for: "policy-yaml", class: "editor-label" }, ["Policy YAML", canPush ? "" : h("span", { class: "muted", text: " (your role can validate and diff, not push)" })]),
      editor,
      h("div", { class: "editor-status" }, [dirty, cursorInfo]),
    ]),
    results,
  );

  // ---- the editor: line numbers and marked lines follow the textarea's scroll ----
  function lines() {
    return textarea.value.split("\n").length;
  }
  function redrawLines() {
    const count = lines();
    if (count !== state.lineCount || state.marksChanged) {
      state.lineCount = count;
      state.marksChanged = false;
      const numbers = [];
      const rows = [];
      for (let i = 1; i <= count; i += 1) {
        const bad = state.errorLines.has(i);
        numbers.push(h("div", { class: ["ln", bad && "error"], "data-line": i, text: String(i) }));
        rows.push(h("div", { class: ["bl", bad && "error"], "data-line": i }, "\u200b"));
      }
      replace(gutter, numbers, h("div", { class: "ln pad" }, "\u200b"));
      replace(backdrop, rows, h("div", { class: "bl pad" }, "\u200b"));
    }
    syncScroll();
  }
  function syncScroll() {
    gutter.scrollTop = textarea.scrollTop;
    backdrop.scrollTop = textarea.scrollTop;
  }
  function updateDirty() {
    const changed = textarea.value !== state.original;
    dirty.textContent = changed ? "Unsaved changes" : "No changes";
    dirty.classList.toggle("changed", changed);
  }
  function updateCursor() {
    const before = textarea.value.slice(0, textarea.selectionStart);
    const line = before.split("\n").length;
    const column = before.length - before.lastIndexOf("\n");
    cursorInfo.textContent = `Line ${line}, column ${column}`;
  }
  textarea.addEventListener("input", () => {
    redrawLines();
    updateDirty();
  });
  textarea.addEventListener("scroll", syncScroll);
  for (const name of ["keyup", "click", "select"]) textarea.addEventListener(name, updateCursor);
  // Tab inserts two spaces (YAML); Escape then Tab leaves the editor, so focus is never trapped.
  let escaped = false;
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      escaped = true;
      return;
    }
    if (event.key === "Tab" && !event.shiftKey && !escaped && !event.ctrlKey && !event.altKey && !event.metaKey) {
      event.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
      return;
    }
    escaped = false;
  });

  function mark(errors) {
    state.errorLines = new Set(errors.map((e) => Number(e.line)).filter((n) => n > 0));
    state.marksChanged = true;
    redrawLines();
  }

  function jumpTo(line, column = 1) {
    const all = textarea.value.split("\n");
    const target = Math.min(Math.max(1, line), all.length);
    let start = 0;
    for (let i = 0; i < target - 1; i += 1) start += all[i].length + 1;
    const end = start + all[target - 1].length;
    textarea.focus({ preventScroll: true });
    textarea.setSelectionRange(Math.min(start + Math.max(0, column - 1), end), end);
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 20;
    textarea.scrollTop = Math.max(0, (target - 1) * lineHeight - textarea.clientHeight / 3);
    syncScroll();
    updateCursor();
  }

  function showErrors(errors, heading) {
    mark(errors);
    const list = h(
      "ol",
      { class: "error-list" },
      errors.map((e) =>
        h("li", {}, [
          e.line
            ? h("button", { type: "button", class: "link", "data-line": e.line, text: `Line ${e.line}${e.column ? `, column ${e.column}` : ""}`, onclick: () => jumpTo(Number(e.line), Number(e.column) || 1) })
            : h("span", { class: "muted", text: "No line" }),
          e.path ? h("code", { class: "err-path", text: e.path }) : null,
          h("span", { class: "err-message", text: e.message }),
        ]),
      ),
    );
    replace(results, h("div", { class: "card result error-result" }, [h("h2", { text: heading }), list]));
    const first = errors.find((e) => e.line);
    if (first) jumpTo(Number(first.line), Number(first.column) || 1);
  }

  async function loadCurrent(ask) {
    if (ask && textarea.value !== state.original) {
      const ok = await confirmDialog({ title: "Discard your edits?", message: "Reloading replaces the editor's text with the current policy.", confirmLabel: "Discard and reload", danger: true });
      if (!ok) return;
    }
    try {
      const [current, rejection] = await Promise.all([api.get("/policy"), api.get("/policy/rejected").catch(() => ({ rejected: null }))]);
      if (!ctx.alive()) return;
      state.version = current.version;
      state.original = current.yaml || "";
      textarea.value = state.original;
      meta.textContent = `Source ${current.source} · version ${shortVersion(current.version)}${current.valid === false ? " · the current policy is not valid" : ""}`;
      meta.title = `version ${current.version}`;
      mark([]);
      updateDirty();
      if (ask) replace(results);
      const r = rejection && rejection.rejected;
      rejected.hidden = !r;
      if (r) rejected.textContent = `The last policy change was rejected at ${fmtTime(r.at)} (${r.source}): ${r.error}. Gateways keep the version shown here.`;
    } catch (exc) {
      if (exc.status === 401 || !ctx.alive()) return;
      meta.textContent = `The policy could not be loaded: ${exc.message}`;
    }
  }

  async function runValidate() {
    if (ctx.needsFreshSession()) return;
    try {
      const answer = await api.post("/policy/validate", { yaml: textarea.value });
      if (!ctx.alive()) return;
      if (answer.valid) {
        mark([]);
        const warnings = answer.warnings || [];
        replace(
          results,
          h("div", { class: "card result ok-result" }, [
            h("h2", { text: "Valid" }),
            h("p", { text: answer.summary || "The policy is valid." }),
            warnings.length
              ? [h("h3", { text: `${warnings.length} ${warnings.length === 1 ? "warning" : "warnings"}` }), h("ul", { class: "error-list" }, warnings.map((w) => h("li", {}, [w.line ? h("button", { type: "button", class: "link", text: `Line ${w.line}`, onclick: () => jumpTo(Number(w.line), Number(w.column) || 1) }) : null, w.path ? h("code", { class: "err-path", text: w.path }) : null, h("span", { text: w.message || String(w) })])))]
              : null,
          ]),
        );
      } else {
        const errors = answer.errors || [];
        showErrors(errors, `${errors.length} ${errors.length === 1 ? "error" : "errors"}`);
      }
    } catch (exc) {
      if (exc.status !== 401) replace(results, h("div", { class: "notice error", role: "alert", text: `Validation failed: ${describe(exc)}` }));
    }
  }

  async function runDiff() {
    if (ctx.needsFreshSession()) return;
    try {
      const answer = await api.post("/policy/diff", { yaml: textarea.value });
      if (!ctx.alive()) return;
      const text = answer.diff || "";
      if (!text.trim()) {
        replace(results, h("div", { class: "card result" }, [h("h2", { text: "Diff vs current" }), h("p", { text: "No differences from the current policy." })]));
        return;
      }
      const pre = h(
        "pre",
        { class: "diff", tabindex: "0", "aria-label": "Unified diff" },
        text.split("\n").map((line) => {
          const kind = line.startsWith("+++") || line.startsWith("---") ? "file" : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
          const prefix = kind === "add" ? "added: " : kind === "del" ? "removed: " : "";
          return h("span", { class: ["dl", kind] }, [prefix ? h("span", { class: "visually-hidden", text: prefix }) : null, `${line}\n`]);
        }),
      );
      replace(results, h("div", { class: "card result" }, [h("h2", { text: "Diff vs current" }), pre]));
    } catch (exc) {
      if (exc.status !== 401) replace(results, h("div", { class: "notice error", role: "alert", text: `Diff failed: ${describe(exc)}` }));
    }
  }

  async function runPush() {
    if (ctx.needsFreshSession()) return;
    if (textarea.value === state.original) {
      ctx.notify("Nothing to push: the editor holds the current policy.");
      return;
    }
    const ok = await confirmDialog({
      title: "Push this policy?",
      message: `Every gateway moves to it. It replaces version ${shortVersion(state.version)}.`,
      confirmLabel: "Push policy",
    });
    if (!ok) return;
    try {
      const answer = await api.put("/policy", { yaml: textarea.value, expected_version: state.version });
      if (!ctx.alive()) return;
      ctx.notify(`Policy pushed: version ${shortVersion(answer.version)}.`, "success");
      replace(results, h("div", { class: "card result ok-result" }, [h("h2", { text: "Pushed" }), h("p", { text: `The policy is now version ${shortVersion(answer.version)}.` })]));
      await loadCurrent(false);
    } catch (exc) {
      if (exc.status === 401 || !ctx.alive()) return;
      if (exc.status === 409) {
        replace(
          results,
          h("div", { class: "card result conflict-result", role: "alert" }, [
            h("h2", { text: "Conflict: the policy changed since you loaded it" }),
            h("p", { text: `You edited version ${shortVersion(state.version)}, but someone (or something) has pushed another version since. Nothing was written. Your edits are still in the editor: use Diff to compare with the current policy, copy what you need, then Reload current and apply your change again.` }),
            h("p", { class: "muted", text: exc.message }),
          ]),
        );
        return;
      }
      const errors = exc.body.errors || (exc.body.error && exc.body.error.errors) || (exc.details || []).filter((d) => d.line || d.message);
      if (exc.status === 400 && errors && errors.length) {
        showErrors(errors, `Not pushed: ${errors.length} ${errors.length === 1 ? "error" : "errors"}`);
        return;
      }
      replace(results, h("div", { class: "notice error", role: "alert", text: `Push failed: ${describe(exc)}` }));
    }
  }

  loadCurrent(false);
}

function describe(exc) {
  if (exc.status === 403 && exc.code === "csrf") return "your session's CSRF token is missing or stale: sign in again.";
  return exc.message;
}
