// Modal dialogs on the native <dialog> element: showModal() makes the rest of the page inert, Escape
// closes it (the "cancel" event), Tab and Shift+Tab wrap inside it, and focus goes back to what
// opened it when it closes.

import { h, nextId } from "./dom.js";

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function openDialog({ title, body, actions = [], onClose, className, initialFocus }) {
  const titleId = nextId("dlg-title");
  const opener = document.activeElement;
  const content = h("div", { class: "dialog-body" }, body);
  const footer = h("div", { class: "dialog-actions" }, actions);
  const heading = h("h2", { id: titleId, text: title });
  const dialog = h("dialog", { class: ["dialog", className], "aria-labelledby": titleId, "aria-modal": "true" }, [
    h("div", { class: "dialog-head" }, [
      heading,
      h("button", { type: "button", class: "icon-button", "aria-label": "Close dialog", text: "×", onclick: () => close() }),
    ]),
    content,
    footer,
  ]);

  let closed = false;
  function close(result) {
    if (closed) return;
    closed = true;
    if (dialog.open) dialog.close();
    dialog.remove();
    if (onClose) onClose(result);
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
  }

  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    close();
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const items = [...dialog.querySelectorAll(FOCUSABLE)].filter((el) => el.getClientRects().length > 0);
    if (items.length === 0) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });

  document.body.append(dialog);
  dialog.showModal();
  const target =
    (initialFocus && (typeof initialFocus === "function" ? initialFocus() : initialFocus)) ||
    content.querySelector(FOCUSABLE) ||
    footer.querySelector(FOCUSABLE);
  if (target) target.focus();

  return {
    element: dialog,
    body: content,
    footer,
    heading,
    close,
    setActions(...buttons) {
      footer.replaceChildren(...buttons.flat());
    },
  };
}

// Resolves true when confirmed, false otherwise (Cancel, Escape, the close button).
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    let result = false;
    const cancel = h("button", { type: "button", class: "button", text: "Cancel", onclick: () => dlg.close() });
    const ok = h("button", {
      type: "button",
      class: ["button", danger ? "danger" : "primary"],
      text: confirmLabel,
      onclick: () => {
        result = true;
        dlg.close();
      },
    });
    const dlg = openDialog({
      title,
      body: Array.isArray(message) ? message : [h("p", { text: message })],
      actions: [cancel, ok],
      onClose: () => resolve(result),
      initialFocus: cancel,
      className: "dialog-small",
    });
  });
}
