// Click-to-call: a caller reaches a queue (or an entry point whose script picks one), waits with
// position and estimated wait shown, keys digits, talks through the browser and hangs up.

import { Api } from "./api.js";
import { Phone, beep } from "./media.js";
import { $, busy, duration, el, nodeBadge, report, show } from "./ui.js";

const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
const POLL_MS = 1000;

const api = new Api();
const phone = new Phone($("#remote-audio"), { onStatus: audioStatus });
let call = null; // the POST /calls reply, then the latest GET /calls/ID
let callerToken = null;
let poller = null;
let placedAt = 0;

async function dial(event) {
  event.preventDefault();
  const form = event.target;
  const target = form.target.value.trim();
  if (!target) {
    report($("#dial-error"), new Error(`Enter the ${form.kind.value === "entry" ? "entry point" : "queue"} to call.`));
    form.target.focus();
    return;
  }
  const body = { caller: form.caller.value.replace(/\s+/g, "") || "anonymous" };
  body[form.kind.value] = target;
  await busy($("#call-button"), $("#dial-error"), async () => {
    let reply = null;
    if (form.media.checked) {
      await phone.connect(async (sdp) => {
        reply = await api.post("/calls", { ...body, sdp }, { token: null });
        return reply.sdp || null;
      });
    } else {
      reply = await api.post("/calls", body, { token: null });
    }
    started(reply);
  });
}

function started(reply) {
  call = reply;
  callerToken = reply.caller_token || null;
  placedAt = Date.now();
  $("#keyed").textContent = "";
  $("#call-ref").textContent = `Call reference ${reply.call_id}`;
  report($("#call-error"), null);
  show($("#dial"), false);
  show($("#on-call"), true);
  show($("#hangup"), true);
  show($("#mute"), Boolean(reply.sdp));
  show($("#again"), false);
  $("#keypad").hidden = false;
  render();
  clearTimeout(poller);
  poller = setTimeout(poll, POLL_MS);
  $("#hangup").focus();
}

const callPath = (suffix = "") => `/calls/${encodeURIComponent(call.call_id)}${suffix}`;
const asCaller = () => ({ token: callerToken });

async function poll() {
  if (!call) return;
  try {
    const latest = await api.get(callPath(), asCaller());
    call = { ...call, ...latest };
    report($("#call-error"), null);
  } catch (error) {
    report($("#call-error"), error);
  }
  render();
  if (call && call.state !== "ended") poller = setTimeout(poll, POLL_MS);
}

async function hangup(event) {
  await busy(event.currentTarget, $("#call-error"), async () => {
    const latest = await api.post(callPath("/hangup"), {}, asCaller());
    call = { ...call, ...latest };
    render();
  });
}

async function key(button, digit) {
  beep(digit);
  $("#keyed").textContent = ($("#keyed").textContent + digit).slice(-24);
  await busy(button, $("#call-error"), () =>
    api.post(callPath("/digits"), { digits: digit }, asCaller()),
  );
}

function render() {
  const state = call.state;
  let title = "Connecting…";
  let detail = "";
  if (state === "waiting" || state === "ivr" || state === "arriving") {
    title = state === "waiting" ? "Please hold" : "Connecting…";
    const parts = [];
    if (call.position) parts.push(`You are number ${call.position} in the queue`);
    if (typeof call.estimated_wait_s === "number") {
      parts.push(`estimated wait ${wait(call.estimated_wait_s)}`);
    }
    detail = parts.join(" · ");
  } else if (state === "offered") {
    title = "Ringing an agent…";
  } else if (state === "talking") {
    title = "Connected";
    detail = call.agent_id ? `You are talking with agent ${call.agent_id}` : "";
  } else if (state === "ended") {
    title = "Call ended";
    detail = outcomeText(call);
    finish();
  }
  $("#call-state").textContent = title;
  $("#call-detail").textContent = detail;
}

function wait(seconds) {
  if (seconds < 60) return "under a minute";
  const minutes = Math.round(seconds / 60);
  return `about ${minutes} minute${minutes === 1 ? "" : "s"}`;
}

function outcomeText(ended) {
  const text = {
    completed: "Thank you for calling.",
    abandoned: "You hung up before an agent answered.",
    voicemail: "Your message was passed to voicemail.",
    overflowed: "All agents are busy; please try again later.",
    failed: "The call failed",
  }[ended.outcome] || "";
  return ended.outcome === "failed" && ended.reason ? `${text}: ${ended.reason}.` : text;
}

function finish() {
  clearTimeout(poller);
  phone.hangup();
  show($("#hangup"), false);
  show($("#mute"), false);
  $("#keypad").hidden = true;
  show($("#again"), true);
  if (placedAt) $("#call-timer").textContent = `Call lasted ${duration(Date.now() - placedAt)}`;
  placedAt = 0;
}

function audioStatus(state) {
  const status = $("#audio-status");
  status.dataset.state = state;
  status.textContent = {
    microphone: "microphone ready",
    connecting: "connecting",
    connected: "connected",
    disconnected: "interrupted",
    failed: "failed",
    closed: "off",
    "no-media": "not available: the call goes on without sound",
    new: "connecting",
  }[state] || state;
}

setInterval(() => {
  if (call && call.state !== "ended" && placedAt) {
    $("#call-timer").textContent = duration(Date.now() - placedAt);
  }
}, 1000);

// -- wiring ------------------------------------------------------------------------------------

for (const digit of KEYS) {
  const button = el("button", { type: "button", class: "key", "aria-label": `Key ${digit}` }, digit);
  button.addEventListener("click", () => key(button, digit));
  $("#keypad").append(button);
}
for (const radio of document.querySelectorAll("input[name=kind]")) {
  radio.addEventListener("change", () => {
    const entry = radio.value === "entry" && radio.checked;
    if (!radio.checked) return;
    $("#target-label").textContent = entry ? "Entry point" : "Queue";
    $("#target-help").textContent = entry
      ? "The number's entry point, e.g. main; its menu picks the queue."
      : "The line to call, e.g. sales or support.";
  });
}
$("#dial").addEventListener("submit", dial);
$("#hangup").addEventListener("click", hangup);
$("#mute").addEventListener("click", (event) => {
  phone.setMuted(!phone.muted);
  event.currentTarget.setAttribute("aria-pressed", String(phone.muted));
  event.currentTarget.textContent = phone.muted ? "Unmute" : "Mute";
});
$("#again").addEventListener("click", () => {
  call = null;
  show($("#on-call"), false);
  show($("#dial"), true);
  $("#call-timer").textContent = "";
});
// Leaving the page hangs up, so no call waits for a caller who is gone.
window.addEventListener("pagehide", () => {
  if (!call || call.state === "ended") return;
  const headers = { "Content-Type": "application/json" };
  if (callerToken) headers.Authorization = `Bearer ${callerToken}`;
  fetch(callPath("/hangup"), { method: "POST", headers, body: "{}", keepalive: true });
});
nodeBadge(api);
