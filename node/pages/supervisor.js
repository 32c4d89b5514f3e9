// The supervisor's board: every site's agents and queues (the registry, live), and the calls
// this node owns (its call records) with their KPIs. Refreshed every two seconds.

import { Api, ApiError } from "./api.js";
import { $, busy, clock, duration, el, every, label, nodeBadge, pill, report, show } from "./ui.js";

const REFRESH_MS = 2000;
const SERVICE_LEVEL_S = 20;
const STATE_ORDER = ["available", "reserved", "talking", "wrap-up", "not-ready", "offline"];

const api = new Api({ onUnauthorized: () => signOut("Your sign-in expired: sign in again.") });
let stop = null;
let voicemail = true; // until the node says it has no voicemail list

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const user = form.user.value.trim();
  if (!user) {
    report($("#signin-error"), new Error("Enter your user name."));
    return;
  }
  await busy(form.querySelector("button[type=submit]"), $("#signin-error"), async () => {
    const session = await api.login(user, form.password.value);
    if (session.role === "agent") {
      api.forget();
      throw new Error("This page is for supervisors: agents use the agent desk.");
    }
    form.password.value = "";
    open();
  });
}

function open() {
  show($("#signin"), false);
  show($("#board"), true);
  const who = $("#who");
  who.replaceChildren(
    el("span", {}, api.session.user || ""),
    el("button", { class: "ghost small", onclick: () => signOut(null) }, "Sign out"),
  );
  show(who, true);
  stop = every(REFRESH_MS, refresh);
}

function signOut(message) {
  if (stop) stop();
  stop = null;
  api.forget();
  show($("#board"), false);
  show($("#who"), false);
  show($("#signin"), true);
  report($("#signin-error"), message ? new Error(message) : null);
}

async function refresh() {
  try {
    const [view, registry, records] = await Promise.all([
      api.get("/supervisor"),
      api.get("/registry").catch(() => null),
      api.get("/records?limit=200"),
    ]);
    const node = registry?.node || "";
    renderTiles(view, records.calls);
    renderSites(view, registry);
    renderAgents(registry);
    renderCalls(records.calls, node);
    if (voicemail) await refreshVoicemail();
    report($("#board-error"), null);
    $("#updated").textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    report($("#board-error"), error);
    $("#updated").textContent = "Not updating";
  }
}

async function refreshVoicemail() {
  try {
    const reply = await api.get("/voicemails");
    renderVoicemail(reply.voicemails || []);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      voicemail = false; // this node has no voicemail list
      show($("#voicemail-card"), false);
      return;
    }
    throw error;
  }
}

// -- key figures -------------------------------------------------------------------------------

function renderTiles(view, calls) {
  const totals = {};
  let waiting = 0;
  let oldest = 0;
  for (const site of Object.values(view.sites)) {
    for (const [state, count] of Object.entries(site.agents)) {
      totals[state] = (totals[state] || 0) + count;
    }
    for (const queue of site.queues) {
      waiting += queue.waiting;
      oldest = Math.max(oldest, queue.oldest_wait_s);
    }
  }
  const loggedIn = Object.entries(totals)
    .filter(([state]) => state !== "offline")
    .reduce((sum, [, count]) => sum + count, 0);
  const kpi = kpis(calls);
  const tiles = [
    ["Agents logged in", loggedIn, "every site"],
    ["Available", totals.available || 0, "ready for a call"],
    ["On calls", (totals.talking || 0) + (totals.reserved || 0), "talking or ringing"],
    ["Calls waiting", waiting, "every site", waiting > 0],
    ["Longest wait", duration(oldest * 1000), "oldest waiting call", oldest >= SERVICE_LEVEL_S],
    [
      `Service level ${SERVICE_LEVEL_S} s`,
      kpi.serviceLevel === null ? "–" : `${Math.round(kpi.serviceLevel * 100)} %`,
      `answered within ${SERVICE_LEVEL_S} s of those answered or abandoned after ${SERVICE_LEVEL_S} s`,
    ],
    ["Answered", kpi.answered, "calls owned by this node"],
    ["Abandoned", kpi.abandoned, "caller hung up before an answer", kpi.abandoned > 0],
    ["ASA", kpi.asa === null ? "–" : duration(kpi.asa), "average speed of answer"],
    ["AHT", kpi.aht === null ? "–" : duration(kpi.aht), "average talk time of ended calls"],
  ];
  $("#tiles").replaceChildren(
    ...tiles.map(([name, value, help, alert]) =>
      el("div", { class: `tile${alert ? " alert" : ""}`, title: help },
        el("div", { class: "value" }, String(value)),
        el("div", { class: "name" }, name)),
    ),
  );
}

// Service level, ASA and AHT over the records this node holds.
function kpis(calls) {
  let answered = 0;
  let abandoned = 0;
  let inTarget = 0;
  let lateAbandoned = 0;
  let waitSum = 0;
  let talkSum = 0;
  let talked = 0;
  const target = SERVICE_LEVEL_S * 1000;
  for (const call of calls) {
    if (call.answered_ms) {
      answered += 1;
      const wait = call.answered_ms - call.arrived_ms;
      waitSum += wait;
      if (wait <= target) inTarget += 1;
      if (call.ended_ms) {
        talkSum += call.ended_ms - call.answered_ms;
        talked += 1;
      }
    } else if (call.outcome === "abandoned") {
      abandoned += 1;
      if (call.ended_ms - call.arrived_ms > target) lateAbandoned += 1;
    }
  }
  const judged = answered + lateAbandoned;
  return {
    answered,
    abandoned,
    serviceLevel: judged ? inTarget / judged : null,
    asa: answered ? waitSum / answered : null,
    aht: talked ? talkSum / talked : null,
  };
}

// -- sites -------------------------------------------------------------------------------------

function renderSites(view, registry) {
  const trust = {};
  for (const node of registry?.nodes || []) trust[node.site] = node.trust;
  const names = Object.keys(view.sites).sort();
  $("#sites").replaceChildren(
    ...names.map((name) => {
      const site = view.sites[name];
      const states = STATE_ORDER.filter((s) => site.agents[s]).map((s) =>
        pill(s, `${label(s)} ${site.agents[s]}`),
      );
      const queues = site.queues.length
        ? el("table", {},
            el("thead", {}, el("tr", {},
              el("th", { scope: "col" }, "Queue"), el("th", { scope: "col" }, "Node"),
              el("th", { scope: "col", class: "num" }, "Waiting"),
              el("th", { scope: "col", class: "num" }, "Oldest"))),
            el("tbody", {}, site.queues.map((q) => el("tr", {},
              el("td", {}, q.queue), el("td", { class: "muted" }, q.node),
              el("td", { class: "num" }, String(q.waiting)),
              el("td", { class: "num" }, q.waiting ? duration(q.oldest_wait_s * 1000) : "–")))))
        : el("p", { class: "empty" }, "No queue has calls here.");
      return el("section", { class: "card", "aria-label": `Site ${name}` },
        el("div", { class: "card-head" }, el("h2", {}, name),
          trust[name] ? el("span", { class: "muted" }, trust[name]) : null),
        el("div", { class: "states" },
          states.length ? states : el("span", { class: "muted" }, "No agents logged in")),
        queues);
    }),
  );
}

function renderAgents(registry) {
  if (!registry) {
    $("#agents").replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" },
      "The agent list needs the operations view (/registry), which this sign-in may not read.")));
    return;
  }
  const agents = registry.agents
    .filter((a) => a.state !== "offline")
    .sort((a, b) => a.site.localeCompare(b.site) || a.agent_id.localeCompare(b.agent_id));
  $("#agents-count").textContent = `${agents.length} logged in`;
  const now = Date.now();
  $("#agents").replaceChildren(
    ...(agents.length
      ? agents.map((a) => el("tr", { dataset: { agent: a.agent_id } },
          el("td", {}, el("strong", {}, a.agent_id)),
          el("td", {}, a.site),
          el("td", {}, pill(a.state, a.reason ? `${label(a.state)} · ${a.reason}` : label(a.state))),
          el("td", { class: "num" }, duration(now - a.state_since_ms)),
          el("td", {}, String(a.tier)),
          el("td", { class: "muted" },
            Object.entries(a.skills).map(([s, l]) => `${s} ${l}`).join(", ")),
          el("td", { class: "muted" }, a.home_node)))
      : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No agent is logged in."))]),
  );
}

function renderCalls(calls, node) {
  $("#calls-scope").textContent = node ? `owned by ${node}` : "";
  const recent = calls.slice(0, 25);
  $("#calls").replaceChildren(
    ...(recent.length
      ? recent.map((c) => {
          const wait = (c.answered_ms || c.ended_ms || Date.now()) - c.arrived_ms;
          const talking = c.answered_ms && (c.ended_ms || c.state === "talking");
          const talk = talking ? (c.ended_ms || Date.now()) - c.answered_ms : 0;
          return el("tr", { dataset: { call: c.call_id } },
            el("td", {}, clock(c.arrived_ms)),
            el("td", {}, c.caller),
            el("td", {}, c.queue),
            el("td", {}, c.agent_id || "–"),
            el("td", {}, pill(c.outcome || c.state, label(c.outcome || c.state))),
            el("td", { class: "num" }, duration(wait)),
            el("td", { class: "num" }, talk ? duration(talk) : "–"),
            el("td", { class: "muted" }, (c.notes || "").slice(0, 80)));
        })
      : [el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No calls yet."))]),
  );
}

function renderVoicemail(items) {
  show($("#voicemail-card"), true);
  $("#voicemails").replaceChildren(
    ...(items.length
      ? items.map((v) => el("tr", { dataset: { call: v.call_id } },
          el("td", {}, clock(v.at_ms)),
          el("td", {}, v.caller || "anonymous"),
          el("td", {}, v.queue || v.entry || ""),
          el("td", { class: "muted" }, v.call_id),
          el("td", {}, v.file ? v.file.split("/").pop() : el("span", { class: "muted" }, "no recording"))))
      : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No voicemail."))]),
  );
}

$("#signin-form").addEventListener("submit", signIn);
nodeBadge(api);
if (api.signedIn()) open();
