"""The simulated people: agents who log in, take offers from their events websocket, answer after
a short ring, talk for the sampled time, hang up and finish wrap-up; callers who dial a queue at
their site, poll their position, and hang up when their patience runs out.

Everything goes through the nodes' public HTTP API (loadtest/client.py). The only shortcut: a
caller learns that an agent answered from the agent's side in this process, as a real caller hears
the agent pick up (signalling-only calls carry no audio to hear). Bounded: arrivals stop at the
scenario's duration, and every call is given up `drain_s` later.

Media mode (given `Phones`, loadtest/media.py): each agent opens its WebRTC leg at its home node
after login (POST /agents/{id}/media) and keeps it for the run; each caller sends its offer in
POST /calls and closes its leg when its call ends. After answering, the agent checks the call's
audio both ways (bounded by AUDIO_TIMEOUT_S) before it talks out the rest of the call's time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from loadtest.client import NodeApi
from loadtest.scenario import Scenario, queue_for

if TYPE_CHECKING:
    from loadtest.media import Phones, ToneLeg

log = logging.getLogger(__name__)

POLL_S = 3.0
"""How often a waiting caller asks for its position."""
RELEASE_WAIT_S = 15.0
"""How long an agent waits for its node to confirm that a call it hung up is over."""
HANGUP_TRIES = 10
SILENCE_S = 30.0
"""A caller whose agent never hangs up gives up this long after the expected end of the talk."""
SAMPLE_S = 1.0
CLOSE_S = 20.0
"""Agents end their calls this long before the end of the drain period at the latest."""
TRACK_WAIT_S = 5.0
"""How long an agent who answered waits to learn the caller (its POST /calls still answering)."""
AUDIO_TIMEOUT_S = 10.0
"""Media mode: how long after the answer both sides may take to hear each other."""
LEGS_READY_S = 30.0


@dataclass(frozen=True, slots=True)
class AgentPlan:
    agent_id: str
    site: str
    node: str
    tier: int
    skills: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class CallTrack:
    """One caller, as the load test sees it (times in seconds from the start of traffic)."""

    index: int
    queue: str
    site: str
    node: str
    at_s: float
    patience_s: float
    talk_s: float
    call_id: str = ""
    token: str = ""
    accepted_s: float = -1.0
    answered_s: float = -1.0
    ended_s: float = -1.0
    abandoned: bool = False
    gave_up: bool = False  # the agent never hung up: the caller did
    refused: str = ""  # POST /calls failed: status and reason
    position: int = 0  # the worst position the caller was told
    leg: ToneLeg | None = None  # media mode: the caller's WebRTC leg while the call lasts
    audio: str = ""  # media mode, once answered: "verified", or what the check found missing
    audio_s: float = -1.0  # media mode: how long after the answer the check ended
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Busy:
    """An agent busy with one call: from the offer to being free again (wrap-up done)."""

    agent_id: str
    site: str
    start_s: float
    end_s: float
    call_id: str
    answered: bool


@dataclass(frozen=True, slots=True)
class Sample:
    """The load test's view at `t_s`, per site."""

    t_s: float
    waiting: dict[str, int]
    busy: dict[str, int]
    agents: dict[str, int]


def plan_agents(scenario: Scenario, nodes_of: dict[str, list[str]]) -> list[AgentPlan]:
    """Agent ids `SITE-gG-NNNN`, homed round-robin over their site's nodes."""
    plans = []
    for g, group in enumerate(scenario.agents):
        nodes = nodes_of[group.site]
        for i in range(group.count):
            agent_id = f"{group.site}-g{g}-{i:04d}"
            plans.append(
                AgentPlan(agent_id, group.site, nodes[i % len(nodes)], group.tier, group.skills)
            )
    return plans


def plan_calls(
    scenario: Scenario, nodes_of: dict[str, list[str]], *, siloed: bool
) -> list[CallTrack]:
    """Every caller of the run, from the seed: Poisson arrivals per (queue, site) stream."""
    rng = random.Random(scenario.seed)
    calls = []
    for stream in scenario.arrivals:
        t = 0.0
        while True:
            t += rng.expovariate(stream.rate_per_s)
            if t >= scenario.duration_s:
                break
            calls.append((t, stream))
    calls.sort(key=lambda c: c[0])
    tracks = []
    for i, (t, stream) in enumerate(calls):
        nodes = nodes_of[stream.site]
        tracks.append(
            CallTrack(
                index=i,
                queue=queue_for(stream, siloed=siloed),
                site=stream.site,
                node=nodes[i % len(nodes)],
                at_s=t,
                patience_s=scenario.patience.sample(rng),
                talk_s=scenario.handle.sample(rng),
            )
        )
    return tracks


class Traffic:
    """Runs the agents and callers of one scenario against the nodes in `apis` (node id -> API)."""

    def __init__(
        self,
        scenario: Scenario,
        apis: dict[str, NodeApi],
        agents: list[AgentPlan],
        calls: list[CallTrack],
        *,
        progress: Callable[[str], None] | None = None,
        caller_user: str | None = None,
        phones: Phones | None = None,
    ) -> None:
        self.scenario = scenario
        self.phones = phones  # media mode
        # who callers start their calls as: nobody (no token), or a staff user when the cluster
        # limits calls per client address (every simulated caller shares this one)
        self.caller_user = caller_user
        self.apis = apis
        self.agents = agents
        self.calls = calls
        self.by_id: dict[str, CallTrack] = {}
        self.busy: list[Busy] = []
        self.samples: list[Sample] = []
        self.client_double_offers = 0  # an agent offered a call while on another (client view)
        self.answer_refused = 0  # an agent's answer the node refused (the offer was gone)
        self.errors: list[str] = []
        self._rng = random.Random(scenario.seed + 1)
        self._current: dict[str, str] = {}  # agent -> the call it is busy with
        self._released: dict[tuple[str, str], asyncio.Event] = {}
        self._release_reason: dict[tuple[str, str], str] = {}
        self._sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._legs: dict[str, ToneLeg] = {}  # media mode: agent -> its leg
        self._index = {plan.agent_id: i for i, plan in enumerate(agents)}
        self._known: dict[str, asyncio.Event] = {}  # calls an agent answered before its caller
        self._history: dict[str, collections.deque[tuple[float, str, str]]] = {}
        self._t0 = 0.0
        self._progress = progress

    def now(self) -> float:
        return time.monotonic() - self._t0

    def _closing_s(self) -> float:
        """When the agents cut their last calls short, so that every call ends before the run
        does (a long exponential talk could outlast `drain_s`)."""
        return self.scenario.duration_s + max(0.0, self.scenario.drain_s - CLOSE_S)

    # -- agents ----------------------------------------------------------------------------------

    async def log_in(self, concurrency: int = 32) -> None:
        """Every agent logged in (available) with its events websocket open."""
        gate = asyncio.Semaphore(concurrency)

        async def one(plan: AgentPlan) -> None:
            async with gate:
                api = self.apis[plan.node]
                status, body = await api.request(
                    "POST",
                    f"/agents/{plan.agent_id}/login",
                    {"tier": plan.tier, "skills": dict(plan.skills)},
                    user=plan.agent_id,
                )
                if status != 200:
                    raise RuntimeError(f"login of {plan.agent_id} failed: {status} {body}")
                socket = await api.websocket(f"/agents/{plan.agent_id}/events", user=plan.agent_id)
                self._sockets[plan.agent_id] = socket
                if self.phones is not None:
                    await self._open_leg(plan, self.phones)

        await asyncio.gather(*(one(plan) for plan in self.agents))
        if self.phones is not None:
            late = await self.phones.connected(self._legs.values(), LEGS_READY_S)
            if late:
                raise RuntimeError(
                    f"{len(late)} agents' media legs not connected within {LEGS_READY_S:g} s"
                )

    async def _open_leg(self, plan: AgentPlan, phones: Phones) -> None:
        """The agent's WebRTC leg at its home node, kept up from call to call."""
        from loadtest.media import agent_hz

        leg = await phones.open(agent_hz(self._index[plan.agent_id]))
        self._legs[plan.agent_id] = leg
        status, body = await self.apis[plan.node].request(
            "POST", f"/agents/{plan.agent_id}/media", {"sdp": leg.leg.local_sdp}, user=plan.agent_id
        )
        if status != 200 or not isinstance(body, dict) or "sdp" not in body:
            raise RuntimeError(f"media leg of {plan.agent_id} refused: {status} {body!r:.120}")
        await leg.leg.accept(str(body["sdp"]))

    async def log_out(self, concurrency: int = 32) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(plan: AgentPlan) -> None:
            async with gate:
                socket = self._sockets.pop(plan.agent_id, None)
                if socket is not None:
                    await socket.close()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await self.apis[plan.node].request(
                        "POST", f"/agents/{plan.agent_id}/logout", {}, user=plan.agent_id
                    )

        await asyncio.gather(*(one(plan) for plan in self.agents))

    async def _listen(self, plan: AgentPlan, tasks: set[asyncio.Task[None]]) -> None:
        socket = self._sockets[plan.agent_id]
        async for message in socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            event = message.json()
            kind = event.get("type")
            history = self._history.setdefault(plan.agent_id, collections.deque(maxlen=8))
            history.append((round(self.now(), 3), kind, _summary(event)))
            if kind == "offer":
                call_id = str(event["offer"]["call_id"])
                task = asyncio.create_task(self._take(plan, call_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif kind == "released":
                key = (plan.agent_id, str(event["call_id"]))
                self._release_reason[key] = str(event.get("reason", ""))
                self._event(key).set()

    def _event(self, key: tuple[str, str]) -> asyncio.Event:
        event = self._released.get(key)
        if event is None:
            event = self._released[key] = asyncio.Event()
        return event

    async def _take(self, plan: AgentPlan, call_id: str) -> None:
        """One offer: ring, answer, talk, hang up, wrap up."""
        agent, api = plan.agent_id, self.apis[plan.node]
        start = self.now()
        previous = self._current.get(agent)
        held = self._released.get((agent, previous)) if previous is not None else None
        if held is not None and not held.is_set():
            # offered while its node has not released the previous call (a release it already
            # sent is not a double booking: this client is just slower to notice)
            self.client_double_offers += 1
            log.error(
                "agent %s offered %s while on %s; its last events: %s",
                agent,
                call_id,
                previous,
                list(self._history.get(agent, [])),
            )
        self._current[agent] = call_id
        key = (agent, call_id)
        released = self._event(key)
        answered = False
        try:
            await asyncio.sleep(self.scenario.ring_delay_s)
            path = f"/agents/{agent}/calls/{call_id}"
            if released.is_set():
                return  # the caller hung up while it rang
            status, _ = await api.request("POST", f"{path}/answer", {}, user=agent)
            if status != 200:
                self.answer_refused += 1
                return
            answered = True
            answered_s = self.now()
            track = await self._track(call_id)
            talk = track.talk_s if track is not None else self.scenario.handle.sample(self._rng)
            talk = min(talk, max(0.0, self._closing_s() - self.now()))
            if track is not None:
                track.answered_s = answered_s
                track.answered.set()
                await self._check_audio(agent, track, released)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), max(0.0, answered_s + talk - self.now()))
            for _ in range(HANGUP_TRIES):
                if released.is_set():
                    break
                status, _ = await api.request("POST", f"{path}/hangup", {}, user=agent)
                if status in (200, 404):
                    break
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), RELEASE_WAIT_S)
            if track is not None:
                track.ended.set()  # the caller hears the agent hang up
            if self._release_reason.get(key) == "ended":
                await asyncio.sleep(self.scenario.wrap_up_s)
                await api.request("POST", f"/agents/{agent}/wrap-up/done", {}, user=agent)
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors.append(f"agent {agent} call {call_id}: {error!r}")
        finally:
            if self._current.get(agent) == call_id:
                del self._current[agent]
            self._released.pop(key, None)
            self._release_reason.pop(key, None)
            self.busy.append(Busy(agent, plan.site, start, self.now(), call_id, answered))

    async def _track(self, call_id: str) -> CallTrack | None:
        """The caller of `call_id`, waiting a little for its POST /calls to answer."""
        if call_id not in self.by_id:
            known = self._known.setdefault(call_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(known.wait(), TRACK_WAIT_S)
            self._known.pop(call_id, None)
        return self.by_id.get(call_id)

    async def _check_audio(self, agent: str, track: CallTrack, released: asyncio.Event) -> None:
        """Media mode: the caller hears the agent's tone and the agent the caller's."""
        if self.phones is None:
            return
        leg = self._legs.get(agent)
        if track.leg is None or leg is None:
            track.audio = "no media leg on " + ("the caller" if leg else "the agent")
            return
        track.audio = await self.phones.check(track.leg, leg, AUDIO_TIMEOUT_S, released)
        track.audio_s = self.now() - track.answered_s if track.answered_s >= 0 else -1.0
        if track.audio != "verified":
            track.audio += f" ({await self._call_as_seen(track, leg.leg.connected)})"
            log.error("call %s (agent %s): audio %s", track.call_id, agent, track.audio)

    async def _call_as_seen(self, track: CallTrack, agent_connected: bool) -> str:
        """Why a call's audio may have failed: its legs' connections, and the call as its
        owner shows it to the caller (state, outcome, reason)."""
        caller_connected = track.leg is not None and track.leg.leg.connected
        legs = f"caller leg {'connected' if caller_connected else 'not connected'}, "
        legs += f"agent leg {'connected' if agent_connected else 'not connected'}"
        status, view = await self.apis[track.node].request(
            "GET", f"/calls/{track.call_id}", token=track.token
        )
        if status != 200 or not isinstance(view, dict):
            return f"{legs}; the call: {status}"
        shown = ", ".join(f"{k} {view.get(k)!r}" for k in ("state", "outcome", "reason"))
        return f"{legs}; the call: {shown}"

    # -- callers ---------------------------------------------------------------------------------

    async def _caller(self, track: CallTrack) -> None:
        api = self.apis[track.node]
        request: dict[str, Any] = {"queue": track.queue, "caller": f"+1555{track.index:07d}"}
        if self.phones is not None:
            from loadtest.media import caller_hz

            track.leg = await self.phones.open(caller_hz(track.index))
            request["sdp"] = track.leg.leg.local_sdp
        status, body = await api.request("POST", "/calls", request, user=self.caller_user)
        if status != 201 or not isinstance(body, dict):
            track.refused = f"{status} {body!r:.80}"
            return
        track.call_id = str(body["call_id"])
        track.token = str(body.get("caller_token", ""))
        if track.leg is not None:
            if "sdp" not in body:
                track.refused = "201 without an SDP answer: the node carries no media"
                await api.request("POST", f"/calls/{track.call_id}/hangup", {}, token=track.token)
                return
            await track.leg.leg.accept(str(body["sdp"]))
        track.accepted_s = self.now()
        self.by_id[track.call_id] = track
        known = self._known.pop(track.call_id, None)
        if known is not None:  # its agent answered before this reply came
            known.set()
        path = f"/calls/{track.call_id}"
        while not track.answered.is_set():
            left = track.accepted_s + track.patience_s - self.now()
            if left <= 0:
                status, _ = await api.request("POST", f"{path}/hangup", {}, token=track.token)
                if status == 200 and not track.answered.is_set():
                    track.abandoned = True
                    track.ended_s = self.now()
                    return
                break  # answered meanwhile: the call goes on
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(track.answered.wait(), min(POLL_S, left))
            if not track.answered.is_set():
                status, view = await api.request("GET", path, token=track.token)
                if status == 200 and isinstance(view, dict):
                    track.position = max(track.position, int(view.get("position") or 0))
        expected = track.talk_s + SILENCE_S + self.scenario.ring_delay_s
        expected = min(expected, max(1.0, self._closing_s() + CLOSE_S / 2 - self.now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(track.ended.wait(), expected)
        # the agent hung up (or the line went silent): a call its node still holds live is one
        # whose owner never heard the agent (a cut link); the caller hangs up on the silence
        status, view = await api.request("GET", path, token=track.token)
        if status == 200 and isinstance(view, dict) and view.get("state") != "ended":
            track.gave_up = True
            await api.request("POST", f"{path}/hangup", {}, token=track.token)
        track.ended_s = self.now()

    async def _guarded(self, track: CallTrack) -> None:
        try:
            await self._caller(track)
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors.append(f"caller {track.index} ({track.call_id}): {error!r}")
            if not track.call_id:
                track.refused = repr(error)
        finally:
            if track.leg is not None and self.phones is not None:
                await self.phones.close(track.leg)

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, events: Callable[[float], None] | None = None) -> None:
        """Arrivals for the scenario's duration, then at most `drain_s` for calls to end."""
        self._t0 = time.monotonic()
        listeners: set[asyncio.Task[None]] = set()
        offers: set[asyncio.Task[None]] = set()
        for plan in self.agents:
            listeners.add(asyncio.create_task(self._listen(plan, offers)))
        callers: set[asyncio.Task[None]] = set()
        sampler = asyncio.create_task(self._sample(events))
        try:
            for track in self.calls:
                delay = track.at_s - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._guarded(track))
                callers.add(task)
                task.add_done_callback(callers.discard)
            deadline = self.scenario.duration_s + self.scenario.drain_s
            if callers:
                await asyncio.wait([*callers], timeout=max(0.1, deadline - self.now()))
            if offers:  # the last agents finish their wrap-up
                await asyncio.wait([*offers], timeout=max(0.1, deadline - self.now()))
            if callers or offers:
                self.errors.append(
                    f"{len(callers)} callers and {len(offers)} agents still busy after drain_s"
                )
        finally:
            for task in [*callers, *offers, sampler]:
                task.cancel()
            await asyncio.gather(*callers, *offers, sampler, return_exceptions=True)
            for socket in self._sockets.values():
                await socket.close()
            await asyncio.gather(*listeners, return_exceptions=True)
            if self._progress is not None:
                self._progress("")

    async def _sample(self, events: Callable[[float], None] | None) -> None:
        sites = [s.name for s in self.scenario.sites]
        agents = {site: sum(1 for a in self.agents if a.site == site) for site in sites}
        site_of = {a.agent_id: a.site for a in self.agents}
        last_line = 0.0
        while True:
            now = self.now()
            waiting = dict.fromkeys(sites, 0)
            for track in self.by_id.values():
                if track.answered_s < 0 and track.ended_s < 0:
                    waiting[track.site] += 1
            busy = dict.fromkeys(sites, 0)
            for agent in self._current:
                busy[site_of[agent]] += 1
            self.samples.append(Sample(round(now, 2), waiting, busy, agents))
            if events is not None:
                events(now)
            if self._progress is not None and now - last_line >= 2.0:
                last_line = now
                self._progress(self._line(now, waiting, busy))
            await asyncio.sleep(SAMPLE_S)

    def _line(self, now: float, waiting: dict[str, int], busy: dict[str, int]) -> str:
        arrived = sum(1 for t in self.calls if t.at_s <= now)
        answered = sum(1 for t in self.by_id.values() if t.answered_s >= 0)
        abandoned = sum(1 for t in self.by_id.values() if t.abandoned)
        total = self.scenario.duration_s
        bar = "#" * int(20 * min(now, total) / total)
        return (
            f"[{bar:<20}] {now:5.0f}/{total:.0f} s  calls {arrived}/{len(self.calls)}  "
            f"waiting {sum(waiting.values())}  busy agents {sum(busy.values())}/{len(self.agents)}"
            f"  answered {answered}  abandoned {abandoned}"
        )


def _summary(event: dict[str, Any]) -> str:
    if event.get("type") == "offer":
        return str(event["offer"]["call_id"])
    if event.get("type") == "released":
        return f"{event.get('call_id')} {event.get('reason')}"
    agent = event.get("agent") or {}
    return str(agent.get("state", ""))


def print_progress(line: str) -> None:
    """One progress line, rewritten in place on a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{line:<120}" if line else "\n")
    elif line:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
