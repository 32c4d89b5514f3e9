// The agent's softphone: sign in, take and handle calls, wrap up. One websocket for events and
// one WebRTC connection for audio, both kept for the whole session.

import { Api, ApiError, describe } from "./api.js";
import { Phone, beep } from "./media.js";
import { $, busy, clock, duration, el, label, nodeBadge, pill, report, show } from "./ui.js";

const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
const CUSTOMER_HIDDEN = new Set(["customer_id", "name", "services"]);
const CUSTOMER_FIRST = ["account", "segment", "open_tickets", "notes"]; // then by name

const api = new Api({ onUnauthorized: () => endSession("Your sign-in expired: sign in again.") });
const phone = new Phone($("#remote-audio"), { onStatus: audioStatus });

const desk = {
  agentId: null,
  agent: null, // the agent's record as the node last sent it
  offers: new Map(), // call id -> offer (answered ones are calls)
  current: null, // call id being talked on
  answeredAt: 0,
  held: false,
  consulting: false,
  last: null, // the call just ended, for wrap-up
  socket: null,
  retry: 0,
};

// -- sign in and out ---------------------------------------------------------------------------

function parseSkills(text) {
  const skills = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const match = /^([A-Za-z0-9._-]+)\s*[:=]\s*(\d+)$/.exec(part);
    if (!match || +match[2] < 1 || +match[2] > 10) {
      throw new Error(`Skill "${part}" should look like sales:5 (a level from 1 to 10).`);
    }
    skills[match[1]] = +match[2];
  }
  return skills;
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const user = form.user.value.trim();
  const errors = $("#signin-error");
  if (!user) {
    report(errors, new Error("Enter your agent ID."));
    form.user.focus();
    return;
  }
  await busy(form.querySelector("button[type=submit]"), errors, async () => {
    const profile = { skills: parseSkills(form.skills.value), tier: +form.tier.value };
    const session = await api.login(user, form.password.value);
    const agentId = session.role === "agent" || !session.role ? session.user || user : user;
    await api.post(`/agents/${encodeURIComponent(agentId)}/login`, profile);
    form.password.value = "";
    await start(agentId);
  });
}

async function start(agentId) {
  desk.agentId = agentId;
  desk.offers.clear();
  desk.current = null;
  show($("#signin"), false);
  show($("#desk"), true);
  const who = $("#who");
  who.replaceChildren(
    el("span", {}, agentId),
    el("button", { class: "ghost small", onclick: () => logOut() }, "Sign out"),
  );
  show(who, true);
  $("#log").replaceChildren();
  log(`Signed in as ${agentId}`);
  listen();
  connectAudio();
  render();
}

async function logOut() {
  await busy($("#log-out"), $("#status-error"), async () => {
    await api.post(path("/logout"));
    endSession(null);
  });
}

function endSession(message) {
  if (desk.socket) {
    desk.socket.onclose = null;
    desk.socket.close();
    desk.socket = null;
  }
  phone.close();
  const user = desk.agentId || "";
  desk.agentId = null;
  desk.agent = null;
  api.forget();
  show($("#desk"), false);
  show($("#who"), false);
  show($("#signin"), true);
  $("#user").value = user;
  report($("#signin-error"), message ? new Error(message) : null);
}

const path = (suffix) => `/agents/${encodeURIComponent(desk.agentId)}${suffix}`;

// -- events ------------------------------------------------------------------------------------

function listen() {
  const socket = new WebSocket(api.socketUrl(path("/events")));
  desk.socket = socket;
  linkStatus("connecting");
  socket.onopen = () => {
    desk.retry = 0;
    linkStatus("connected");
  };
  socket.onmessage = (message) => {
    try {
      handle(JSON.parse(message.data));
    } catch (error) {
      log(`Could not read an event: ${describe(error)}`);
    }
  };
  socket.onclose = () => {
    if (desk.socket !== socket) return;
    desk.socket = null;
    linkStatus("reconnecting");
    reconnect();
  };
}

async function reconnect() {
  desk.retry += 1;
  await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 500 * 2 ** desk.retry)));
  if (!desk.agentId || desk.socket) return;
  try {
    await api.get(path("/offers")); // still holding the session here?
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 401)) {
      endSession(`Your session at this node ended: ${describe(error)}`);
      return;
    }
  }
  if (desk.agentId) listen();
}

function handle(event) {
  switch (event.type) {
    case "hello":
      desk.agent = event.agent;
      desk.offers = new Map(event.offers.map((o) => [o.call_id, o]));
      desk.current = event.offers.find((o) => o.answered)?.call_id ?? null;
      break;
    case "offer": {
      const offer = event.offer;
      desk.offers.set(offer.call_id, offer);
      const who = offer.customer?.name || offer.caller;
      log(`${offer.notes ? "Escalated call" : "Incoming call"} from ${who} (${offer.queue})`);
      break;
    }
    case "released": {
      const offer = desk.offers.get(event.call_id);
      desk.offers.delete(event.call_id);
      if (desk.current === event.call_id) {
        desk.last = offer || null;
        desk.current = null;
        desk.held = false;
        desk.consulting = false;
        phone.setMuted(false);
        log(event.reason === "ended" ? "Call ended" : `Call ended: ${event.reason}`);
      } else if (offer) {
        log(
          event.reason === "missed"
            ? "Missed the offer: it rang out"
            : "Offer withdrawn: the caller hung up or the call went elsewhere",
        );
      }
      break;
    }
    case "state":
      if (desk.agent?.state !== event.agent.state) log(`State: ${label(event.agent.state)}`);
      desk.agent = event.agent;
      break;
    default:
      log(`Event ${event.type}`);
  }
  render();
}

// -- audio -------------------------------------------------------------------------------------

async function connectAudio() {
  const status = $("#audio-status");
  show($("#audio-retry"), false);
  try {
    await phone.connect(async (sdp) => {
      try {
        return (await api.post(path("/media"), { sdp })).sdp || null;
      } catch (error) {
        if (error instanceof ApiError && error.code === "http_404") return null;
        throw error;
      }
    });
  } catch (error) {
    status.textContent = "failed";
    status.dataset.state = "failed";
    status.title = describe(error);
    show($("#audio-retry"), true);
    log(`Audio: ${describe(error)}`);
  }
}

function audioStatus(state) {
  const status = $("#audio-status");
  const text = {
    microphone: "microphone ready",
    connecting: "connecting",
    connected: "connected",
    disconnected: "interrupted",
    failed: "failed",
    closed: "off",
    "no-media": "not on this node",
    new: "connecting",
  }[state] || state;
  status.textContent = text;
  status.dataset.state = state;
  status.title = "";
  show($("#audio-retry"), state === "failed" || state === "disconnected");
}

function linkStatus(state) {
  const status = $("#events-status");
  status.textContent = state;
  status.dataset.state = state;
}

setInterval(() => {
  $("#mic-level").value = phone.level();
}, 150);

// -- actions -----------------------------------------------------------------------------------

async function act(button, callId, action, body) {
  return busy(button, $("#phone-error"), () =>
    api.post(path(`/calls/${encodeURIComponent(callId)}/${action}`), body),
  );
}

async function answer(button, callId) {
  const reply = await act(button, callId, "answer");
  if (!reply) return;
  const offer = desk.offers.get(callId);
  if (offer) offer.answered = true;
  desk.current = callId;
  desk.answeredAt = Date.now();
  desk.held = false;
  desk.consulting = false;
  $("#esc-state").textContent = "";
  $("#keyed").textContent = "";
  log(`Answered ${offer?.customer?.name || offer?.caller || callId}`);
  render();
}

async function reject(button, callId) {
  if (await act(button, callId, "reject")) {
    desk.offers.delete(callId);
    log("Rejected the offer");
    render();
  }
}

async function setState(button, state) {
  const body = state === "not-ready" ? { state, reason: $("#reason").value } : { state };
  await busy(button, $("#status-error"), async () => {
    desk.agent = await api.post(path("/state"), body);
    render();
  });
}

async function toggleHold(button) {
  const hold = !desk.held;
  if (await act(button, desk.current, "hold", { hold })) {
    desk.held = hold;
    log(hold ? "Caller on hold" : "Caller back from hold");
    render();
  }
}

function toggleMute(button) {
  phone.setMuted(!phone.muted);
  button.setAttribute("aria-pressed", String(phone.muted));
  log(phone.muted ? "Microphone muted" : "Microphone on");
  render();
}

// Digits go to the call through the API (aiortc negotiates no RFC 4733 telephone-event); the
// agent hears a quiet local tone for each key.
async function keyed(button, key) {
  beep(key);
  const out = $("#keyed");
  out.textContent = (out.textContent + key).slice(-24);
  await act(button, desk.current, "digits", { digits: key });
}

async function escalate(event) {
  event.preventDefault();
  const form = event.target;
  const queue = form.queue.value.trim();
  if (!queue) {
    report($("#phone-error"), new Error("Name the queue to escalate to."));
    return;
  }
  const mode = form.mode.value;
  const body = { queue, notes: form.notes.value.trim(), mode };
  const reply = await act($("#esc-send"), desk.current, "escalate", body);
  if (!reply) return;
  if (mode === "warm") {
    desk.consulting = true;
    $("#esc-state").textContent = `Consulting ${queue}: hand over once the specialist answers.`;
    log(`Consulting ${queue}`);
  } else {
    $("#esc-state").textContent = `Handed to ${queue}.`;
    log(`Escalated to ${queue}`);
  }
  form.notes.value = "";
  render();
}

async function handover(button) {
  if (await act(button, desk.current, "handover")) {
    log("Handed the call over");
    $("#esc-state").textContent = "";
  }
}

async function wrapUp(event) {
  event.preventDefault();
  const form = event.target;
  if (!form.disposition.value) {
    report($("#phone-error"), new Error("Choose a disposition for the call."));
    form.disposition.focus();
    return;
  }
  const body = {
    disposition: form.disposition.value,
    notes: form.notes.value.trim(),
    call_id: desk.last?.call_id ?? "",
  };
  await busy($("#wrapup-done"), $("#phone-error"), async () => {
    const reply = await api.post(path("/wrap-up/done"), body);
    const chosen = form.disposition.selectedOptions[0].textContent;
    log(
      reply?.disposition_saved === false
        ? `Wrapped up (${chosen}), but the disposition was not stored: ${reply.reason}`
        : `Wrapped up: ${chosen}`,
    );
    form.reset();
    desk.last = null;
    render();
  });
}

// -- rendering ---------------------------------------------------------------------------------

function render() {
  const agent = desk.agent;
  const state = agent?.state ?? "offline";
  $("#state-pill").replaceChildren(pill(state, stateText(agent)));
  $("#go-available").disabled = state !== "not-ready"; // wrap-up ends with its form
  $("#go-not-ready").disabled = state !== "available";
  $("#log-out").disabled = state === "talking" || state === "reserved";

  const call = desk.current ? desk.offers.get(desk.current) : null;
  const pending = [...desk.offers.values()].filter((o) => !o.answered);
  const wrapping = !call && state === "wrap-up";
  show($("#idle"), !call && !pending.length && !wrapping);
  $("#offers").replaceChildren(...pending.map(offerCard));
  show($("#call"), Boolean(call));
  show($("#wrapup"), wrapping);
  if (call) renderCall(call);
  if (wrapping) $("#wrapup-call").textContent = desk.last ? `· ${whoIs(desk.last)}` : "";
  show($("#call-timer"), Boolean(call));
  renderCustomer(call || pending[0] || (wrapping ? desk.last : null));
}

function stateText(agent) {
  if (!agent) return "Logged out";
  return agent.state === "not-ready" && agent.reason
    ? `Not ready · ${agent.reason}`
    : label(agent.state);
}

function whoIs(offer) {
  return offer.customer?.name || offer.caller || offer.call_id;
}

function offerCard(offer) {
  const answerButton = el("button", { class: "ok" }, "Answer");
  answerButton.addEventListener("click", () => answer(answerButton, offer.call_id));
  const rejectButton = el("button", { class: "ghost" }, "Reject");
  rejectButton.addEventListener("click", () => reject(rejectButton, offer.call_id));
  return el(
    "article",
    { class: "offer", "aria-label": `Incoming call from ${whoIs(offer)}` },
    el("div", { class: "ring", "aria-hidden": "true" }),
    el(
      "div",
      { class: "offer-text" },
      el("div", { class: "muted" }, offer.notes ? "Escalated call" : "Incoming call"),
      el("div", { class: "big" }, whoIs(offer)),
      el("div", { class: "muted" }, `${offer.caller} · ${offer.queue} · waiting since ${clock(offer.arrived_ms)}`),
    ),
    el("div", { class: "row" }, answerButton, rejectButton),
  );
}

function renderCall(call) {
  $("#call-caller").textContent = whoIs(call);
  $("#call-meta").textContent = `${call.caller} · queue ${call.queue} · call ${call.call_id}`;
  const flags = [];
  if (desk.held) flags.push(pill("held", "On hold"));
  if (phone.muted) flags.push(pill("muted", "Muted"));
  if (desk.consulting) flags.push(pill("consult", "Consulting"));
  $("#call-flags").replaceChildren(...flags);
  $("#hold").setAttribute("aria-pressed", String(desk.held));
  $("#hold").textContent = desk.held ? "Resume" : "Hold";
  $("#mute").setAttribute("aria-pressed", String(phone.muted));
  $("#mute").textContent = phone.muted ? "Unmute" : "Mute";
  show($("#handover"), desk.consulting);
}

function renderCustomer(offer) {
  const box = $("#customer");
  if (!offer) {
    box.replaceChildren(
      el("p", { class: "empty" }, "The caller's record shows here as soon as a call is offered."),
    );
    return;
  }
  const customer = offer.customer || {};
  const parts = [];
  if (offer.notes) {
    parts.push(
      el("div", { class: "notes", role: "note" }, el("strong", {}, "Notes "), offer.notes),
    );
  }
  if (!customer.customer_id) {
    parts.push(
      el("div", { class: "big" }, offer.caller),
      el("p", { class: "empty" }, "No customer record for this number."),
    );
    box.replaceChildren(...parts);
    return;
  }
  parts.push(
    el("div", { class: "customer-head" },
      el("div", { class: "big", id: "customer-name" }, customer.name || offer.caller),
      el("span", { class: "muted" }, customer.customer_id)),
  );
  const rank = (name) => {
    const at = CUSTOMER_FIRST.indexOf(name);
    return at < 0 ? CUSTOMER_FIRST.length : at;
  };
  const rows = Object.entries(customer)
    .filter(([name]) => !CUSTOMER_HIDDEN.has(name))
    .sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b))
    .map(([name, value]) => [el("dt", {}, name.replaceAll("_", " ")), el("dd", {}, value)]);
  parts.push(el("dl", { class: "fields" }, el("dt", {}, "phone"), el("dd", {}, offer.caller), rows));
  if (customer.services) {
    parts.push(el("h3", {}, "Services"), el("p", {}, customer.services));
  }
  box.replaceChildren(...parts);
}

function log(text) {
  const list = $("#log");
  list.prepend(el("li", {}, el("time", {}, clock(Date.now()) || ""), " ", text));
  while (list.children.length > 50) list.lastChild.remove();
}

setInterval(() => {
  const agent = desk.agent;
  $("#state-since").textContent =
    agent && agent.state_since_ms ? `for ${duration(Date.now() - agent.state_since_ms)}` : "";
  if (desk.current) $("#call-timer").textContent = duration(Date.now() - desk.answeredAt);
}, 1000);

// -- wiring ------------------------------------------------------------------------------------

function buildKeypad() {
  const pad = $("#keypad");
  for (const key of KEYS) {
    const button = el("button", { type: "button", class: "key", "aria-label": `Key ${key}` }, key);
    button.addEventListener("click", () => keyed(button, key));
    pad.append(button);
  }
}

$("#signin-form").addEventListener("submit", signIn);
$("#go-available").addEventListener("click", (e) => setState(e.currentTarget, "available"));
$("#go-not-ready").addEventListener("click", (e) => setState(e.currentTarget, "not-ready"));
$("#log-out").addEventListener("click", logOut);
$("#audio-retry").addEventListener("click", connectAudio);
$("#hold").addEventListener("click", (e) => toggleHold(e.currentTarget));
$("#mute").addEventListener("click", (e) => toggleMute(e.currentTarget));
$("#keypad-toggle").addEventListener("click", (e) => {
  const open = $("#keypad").hidden;
  show($("#keypad"), open);
  e.currentTarget.setAttribute("aria-pressed", String(open));
});
$("#hangup").addEventListener("click", (e) => act(e.currentTarget, desk.current, "hangup"));
$("#escalate").addEventListener("submit", escalate);
$("#handover").addEventListener("click", (e) => handover(e.currentTarget));
$("#wrapup").addEventListener("submit", wrapUp);
buildKeypad();
nodeBadge(api);
// Closing the tab on a call asks first (the call itself goes on at the node).
window.addEventListener("beforeunload", (event) => {
  if (desk.current) event.preventDefault();
});

// A reload keeps the session when this node still holds it.
(async () => {
  const session = api.session;
  if (!api.signedIn() || !session.user) return;
  desk.agentId = session.user;
  try {
    await api.get(path("/offers"));
    await start(session.user);
  } catch {
    endSession(null);
  }
})();
