// The console's shell: hash routes, the signed-in principal, the navigation and notifications.
// Pages are modules exporting render(container, ctx) that may return a cleanup function (called
// when the user leaves the page: timers stop there).

import * as api from "./api.js";
import { h, replace } from "./dom.js";
import * as signin from "./pages/signin.js";
import * as spend from "./pages/spend.js";
import * as keys from "./pages/keys.js";
import * as policy from "./pages/policy.js";
import * as health from "./pages/health.js";
import * as audit from "./pages/audit.js";

const ROUTES = {
  "/signin": { page: signin, title: "Sign in", action: null },
  "/spend": { page: spend, title: "Spend", action: "usage.read" },
  "/keys": { page: keys, title: "Keys", action: "keys.read" },
  "/policy": { page: policy, title: "Policy", action: "policy.read" },
  "/health": { page: health, title: "Health", action: "status.read" },
  "/audit": { page: audit, title: "Audit", action: "audit.read" },
};

const main = document.getElementById("main");
let cleanup = null;
let generation = 0;
let returnTo = null;
let signInMessage = null;
let booted = false;

function currentPath() {
  const hash = location.hash || "";
  if (!hash.startsWith("#/")) return null;
  return hash.slice(1).split("?")[0];
}

export function navigate(path) {
  if (location.hash === `#${path}`) route();
  else location.hash = `#${path}`;
}

function firstAllowedPage() {
  for (const [path, entry] of Object.entries(ROUTES)) {
    if (entry.action && api.may(entry.action)) return path;
  }
  return "/signin";
}

function updateChrome(path) {
  const principal = api.currentPrincipal();
  const nav = document.getElementById("mainnav");
  const who = document.getElementById("who");
  nav.hidden = !principal;
  who.hidden = !principal;
  if (principal) {
    document.getElementById("who-name").textContent =
      `${principal.name || principal.id} · ${principal.role}${principal.tenant ? ` (${principal.tenant})` : ""}`;
  }
  for (const item of nav.querySelectorAll("li")) {
    item.hidden = !api.may(item.dataset.action);
    const link = item.querySelector("a");
    if (link.getAttribute("href") === `#${path}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let toastTimer = null;
export function notify(message, kind = "info") {
  const region = document.getElementById("toast");
  replace(region, h("div", { class: ["toast", kind], text: message }));
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => replace(region), 6000);
}

function route() {
  let path = currentPath();
  if (path === null || !ROUTES[path]) {
    path = api.currentPrincipal() ? firstAllowedPage() : "/signin";
    history.replaceState(null, "", `#${path}`);
  }
  if (!api.currentPrincipal() && path !== "/signin") {
    returnTo = path;
    history.replaceState(null, "", "#/signin");
    path = "/signin";
  }
  if (api.currentPrincipal() && path === "/signin" && api.hasCsrf()) {
    path = firstAllowedPage();
    history.replaceState(null, "", `#${path}`);
  }
  const entry = ROUTES[path];
  if (cleanup) {
    try {
      cleanup();
    } catch (exc) {
      console.error(exc);
    }
    cleanup = null;
  }
  generation += 1;
  const mine = generation;
  updateChrome(path);
  document.title = `${entry.title} · ccr-gateway console`;
  main.className = `page page-${path.slice(1)}`;
  replace(main);
  if (entry.action && !api.may(entry.action)) {
    main.append(
      h("h1", { tabindex: "-1", text: entry.title }),
      h("p", { class: "notice", text: "Your role does not give access to this page." }),
    );
  } else {
    const ctx = {
      alive: () => mine === generation,
      notify,
      navigate,
      principal: api.currentPrincipal(),
      signInMessage: () => signInMessage,
      signedIn: () => {
        signInMessage = null;
        const target = returnTo && ROUTES[returnTo] && api.may(ROUTES[returnTo].action) ? returnTo : firstAllowedPage();
        returnTo = null;
        navigate(target);
      },
      // A change needs the CSRF token, which a reloaded page no longer has: sign in again.
      needsFreshSession: () => {
        if (api.hasCsrf()) return false;
        returnTo = path;
        signInMessage = "Sign in again to make changes (the page was reloaded).";
        api.forget();
        navigate("/signin");
        return true;
      },
    };
    try {
      cleanup = entry.page.render(main, ctx) || null;
    } catch (exc) {
      console.error(exc);
      main.append(h("p", { class: "notice error", text: `This page failed to load: ${exc.message}` }));
    }
  }
  // Move focus to the page heading so keyboard and screen-reader users land on the new page.
  const heading = main.querySelector("h1");
  if (heading && !main.contains(document.activeElement) && !document.querySelector("dialog[open]")) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

api.onUnauthenticated(() => {
  if (!booted) return; // boot's own route() sends an unknown visitor to the sign-in page
  const path = currentPath();
  if (path === "/signin") return; // already there (several requests answered 401 at once)
  if (path) {
    returnTo = path;
    signInMessage = "Your session has ended. Sign in again.";
  }
  for (const dialog of document.querySelectorAll("dialog")) dialog.remove();
  updateChrome("/signin");
  navigate("/signin");
});

async function boot() {
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await api.signOut();
    } catch {
      // the session is gone either way
    }
    returnTo = null;
    signInMessage = null;
    navigate("/signin");
  });
  window.addEventListener("hashchange", route);
  if (currentPath() !== "/signin") {
    try {
      await api.loadMe();
    } catch {
      // not signed in (401 already routed) or the API is down: the sign-in page says so
    }
  }
  booted = true;
  route();
}

boot();
