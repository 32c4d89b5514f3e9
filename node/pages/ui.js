// Small DOM helpers shared by the pages. Text from the API is only ever set as text, never as HTML.

import { describe } from "./api.js";

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// el("td", { class: "num", title: "x" }, "text", childNode, ...)
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function show(node, visible = true) {
  node.hidden = !visible;
}

// Put the API's message into an alert region (role="alert" in the HTML), or clear it.
export function report(region, error) {
  if (!error) {
    region.textContent = "";
    region.hidden = true;
    return;
  }
  region.textContent = describe(error);
  region.hidden = false;
}

// Run `action` for a button: disabled while it runs, errors into `region`.
export async function busy(button, region, action) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    if (region) report(region, null);
    return await action();
  } catch (error) {
    if (region) report(region, error);
    else throw error;
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

export function duration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

const LABELS = {
  available: "Available",
  "not-ready": "Not ready",
  reserved: "Ringing",
  talking: "On a call",
  "wrap-up": "Wrap-up",
  offline: "Logged out",
  waiting: "Waiting",
  offered: "Ringing",
  ended: "Ended",
};

export function label(state) {
  return LABELS[state] || (state ? state[0].toUpperCase() + state.slice(1) : "");
}

export function pill(state, text = label(state)) {
  return el("span", { class: `pill pill-${state || "none"}` }, text);
}

// Fill the header's node badge from /healthz (liveness: needs no token).
export async function nodeBadge(api) {
  const badge = $("#node-badge");
  if (!badge) return;
  try {
    const health = await api.get("/healthz", { token: null });
    badge.textContent = `node ${health.node}`;
    badge.hidden = false;
  } catch {
    badge.hidden = true;
  }
}

// Calls `fn` every `ms` while the page is open; returns a stop function.
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
