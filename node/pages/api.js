// The node's HTTP API as the pages use it: JSON in and out, the bearer token when there is one,
// and every failure turned into an ApiError carrying the API's stable code and message.

const STORE = "callmesh.session";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  // onUnauthorized: called when the node refuses the token (401), e.g. when it has expired.
  constructor({ onUnauthorized = () => {} } = {}) {
    this.onUnauthorized = onUnauthorized;
    this.session = load();
  }

  get token() {
    const s = this.session;
    if (!s || !s.token) return null;
    if (s.expires_ms && s.expires_ms <= Date.now()) return null;
    return s.token;
  }

  signedIn() {
    return Boolean(this.session && (this.token || this.session.auth === false));
  }

  remember(session) {
    this.session = session;
    sessionStorage.setItem(STORE, JSON.stringify(session));
  }

  forget() {
    this.session = null;
    sessionStorage.removeItem(STORE);
  }

  // POST /login. A node without authentication (404: auth_disabled, or no /login route at all)
  // lets the page go on as `user` with no token, so the pages work against a development node.
  async login(user, password) {
    try {
      const reply = await this.request("POST", "/login", { user, password }, { token: null });
      this.remember({ ...reply, auth: true });
    } catch (error) {
      const noAuth = error instanceof ApiError && error.status === 404 &&
        (error.code === "auth_disabled" || error.code === "http_404");
      if (!noAuth) throw error;
      this.remember({ token: null, user, role: null, expires_ms: 0, auth: false });
    }
    return this.session;
  }

  // One JSON request. `token` overrides the session's (e.g. a caller_token); null sends none.
  async request(method, path, body = undefined, { token = undefined } = {}) {
    const headers = { Accept: "application/json" };
    const bearer = token === undefined ? this.token : token;
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "unreachable", `The node did not answer (${error.message}).`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      if (data && data.accepted === false) {
        // an agent action the call's owner refused: {"accepted": false, "reason": "..."}
        throw new ApiError(response.status, "refused", data.reason || "refused by the node");
      }
      if (data && typeof data.error === "string") {
        if (response.status === 401 && token === undefined) this.onUnauthorized();
        throw new ApiError(response.status, data.error, data.message || data.error);
      }
      if (response.status === 401 && token === undefined) this.onUnauthorized();
      const detail = text.trim().slice(0, 200) || response.statusText;
      throw new ApiError(response.status, `http_${response.status}`, detail);
    }
    return data;
  }

  get(path, options) {
    return this.request("GET", path, undefined, options);
  }

  post(path, body = {}, options) {
    return this.request("POST", path, body, options);
  }

  // A websocket URL on this node; browsers cannot set headers on a websocket, so the token
  // goes in the query string.
  socketUrl(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }
}

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

// A sentence a person can act on, from anything thrown by the API or the browser.
export function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 0) return error.message;
    return `${error.message} (${error.code})`;
  }
  if (error && error.name === "NotAllowedError") {
    return "The browser refused the microphone: allow it for this page and try again.";
  }
  if (error && error.name === "NotFoundError") {
    return "No microphone was found: plug one in and try again.";
  }
  return (error && error.message) || String(error);
}
