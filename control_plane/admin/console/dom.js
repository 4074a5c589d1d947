// Tiny DOM helpers. Text always goes in through textContent (never innerHTML), so nothing the API
// returns can become markup; no inline styles anywhere (the CSP forbids them): classes only.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (name === "text") el.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" && "value" in el) el.value = value;
    else if (name === "checked" || name === "disabled" || name === "selected" || name === "readOnly") el[name] = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

let uid = 0;
export function nextId(prefix = "id") {
  uid += 1;
  return `${prefix}-${uid}`;
}

// A labelled form field: <div class="field"><label for=..>..</label><control/><p hint/></div>.
export function field(label, control, hint) {
  if (!control.id) control.id = nextId("f");
  const parts = [h("label", { for: control.id, text: label }), control];
  if (hint) {
    const hintId = nextId("hint");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("p", { class: "hint", id: hintId, text: hint }));
  }
  return h("div", { class: "field" }, parts);
}

export function select(options, value, attrs = {}) {
  const el = h("select", attrs);
  for (const option of options) {
    const [v, label] = Array.isArray(option) ? option : [option, option];
    el.append(h("option", { value: v, text: label, selected: v === value }));
  }
  return el;
}

// ---- formatting ----

const usd = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2 });
const usdSmall = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 4 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat("en-US");

export function fmtUsd(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  return Math.abs(n) > 0 && Math.abs(n) < 1 ? usdSmall.format(n) : usd.format(n);
}
export const fmtCompact = (n) => (n === null || n === undefined ? "—" : compact.format(Number(n)));
export const fmtInt = (n) => (n === null || n === undefined ? "—" : whole.format(Number(n)));

export function fmtTime(value, { seconds = false } = {}) {
  if (value === null || value === undefined || value === "") return "—";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const text = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  return seconds ? text.replace(/Z$/, " UTC") : text.replace(/:\d\dZ$/, " UTC");
}

export function fmtPercent(ratio) {
  if (ratio === null || ratio === undefined) return "—";
  return `${(Number(ratio) * 100).toFixed(1)}%`;
}

// A file policy's version is a sha256: its first 12 characters identify it on screen.
export function shortVersion(version) {
  if (!version) return "—";
  const text = String(version);
  return /^[0-9a-f]{40,}$/.test(text) ? `${text.slice(0, 12)}…` : text;
}
