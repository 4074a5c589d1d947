// #/signin: an admin key in, a session (HttpOnly cookie + in-memory CSRF token) out. The key field
// is cleared as soon as it has been sent; it is never stored.

import * as api from "../api.js";
import { h, field } from "../dom.js";

export function render(container, ctx) {
  const key = h("input", {
    type: "password",
    name: "admin-key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "sk-ccr-adm-…",
  });
  const error = h("div", { class: "notice error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "button primary", text: "Sign in" });
  const message = ctx.signInMessage();
  const form = h("form", { class: "signin-form", novalidate: true }, [
    message ? h("p", { class: "notice", role: "status", text: message }) : null,
    field("Admin key", key, "An admin key, as printed once by ccr-gateway admin keys create (or given by your administrator)."),
    error,
    submit,
  ]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const value = key.value.trim();
    if (!value) {
      error.textContent = "Enter an admin key.";
      error.hidden = false;
      key.setAttribute("aria-invalid", "true");
      key.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Signing in…";
    try {
      await api.signIn(value);
      key.value = "";
      ctx.signedIn();
    } catch (exc) {
      key.setAttribute("aria-invalid", "true");
      if (exc.status === 401) error.textContent = "That key was not accepted. Check it and try again.";
      else if (exc.status === 429)
        error.textContent = `Too many failed attempts. Try again in ${exc.body.error?.retry_after ?? 60} seconds.`;
      else error.textContent = `Sign-in failed: ${exc.message}`;
      error.hidden = false;
      key.select();
      key.focus();
    } finally {
      if (ctx.alive()) {
        submit.disabled = false;
        submit.textContent = "Sign in";
      }
    }
  });
  container.append(
    h("section", { class: "signin card" }, [
      h("h1", { text: "Sign in" }),
      h("p", { class: "lead", text: "Sign in to the ccr-gateway Admin console with an admin key." }),
      form,
    ]),
  );
  key.focus();
}
