// The Admin API client (docs/admin-api.md). The session cookie is HttpOnly: this code never sees
// it. The CSRF token from POST /session lives in this module's memory only (never in storage) and
// goes out as X-CSRF-Token on every request but GET/HEAD. A 401 anywhere ends the session:
// listeners (the router) send the user to the sign-in page.

const PREFIX = "/admin/v1";

let csrfToken = null;
let principal = null;
const unauthenticatedListeners = new Set();

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || String(status);
    this.details = error.details || [];
    this.body = body || {};
  }
}

export function onUnauthenticated(listener) {
  unauthenticatedListeners.add(listener);
}

export function currentPrincipal() {
  return principal;
}

export function hasCsrf() {
  return csrfToken !== null;
}

export function forget() {
  csrfToken = null;
  principal = null;
}

export async function request(method, path, { query, body, raw = false } = {}) {
  let url = PREFIX + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (exc) {
    throw new ApiError(0, { error: { code: "network", message: "The Admin API could not be reached." } });
  }
  if (raw && response.ok) return response;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: { code: "bad_answer", message: text.slice(0, 200) } };
    }
  }
  if (response.status === 401 && path !== "/session") {
    forget();
    for (const listener of unauthenticatedListeners) listener();
  }
  if (!response.ok) {
    if (response.status === 429 && data && data.error) {
      const retry = response.headers.get("retry-after");
      if (retry) data.error.retry_after = Number(retry);
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

export const get = (path, query) => request("GET", path, { query });
export const post = (path, body) => request("POST", path, { body: body === undefined ? {} : body });
export const patch = (path, body) => request("PATCH", path, { body });
export const put = (path, body) => request("PUT", path, { body });
export const del = (path) => request("DELETE", path);

export async function signIn(key) {
  const data = await request("POST", "/session", { body: { key } });
  csrfToken = data.csrf_token;
  principal = data.principal;
  return principal;
}

export async function signOut() {
  try {
    await request("DELETE", "/session");
  } finally {
    forget();
  }
}

// The principal of an existing session. A reload keeps the cookie but not the CSRF token: /me
// hands a cookie session its token again, so changes work without signing in anew.
export async function loadMe() {
  const me = await get("/me");
  if (me.csrf_token) csrfToken = me.csrf_token;
  delete me.csrf_token;
  principal = me;
  return principal;
}

// Mirrors control_plane/admin/roles.py: what each role may do (the server decides; this only hides
// what would be refused).
const READS = ["keys.read", "usage.read", "policy.read", "status.read", "audit.read"];
const ALLOWED = {
  admin: null, // everything
  operator: [...READS, "policy.push", "keys.revoke", "keys.rotate"],
  viewer: READS,
  "tenant-admin": ["keys.read", "keys.create", "keys.update", "keys.revoke", "keys.rotate", "usage.read"],
};

export function may(action, who = principal) {
  if (!who) return false;
  const allowed = ALLOWED[who.role];
  if (allowed === null) return true;
  return Boolean(allowed && allowed.includes(action));
}
