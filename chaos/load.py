"""A small, bounded load through the public HTTP API, for chaos runs.

Agents log in at their home node (another node of their site when it stops answering), poll
their offers, answer them, hang up after a short talk and finish wrap-up. Callers arrive at
random nodes of every site, and some abandon. Everything is bounded: a number of calls, a
polling period, and a wind-down after which the driver stops whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from chaos.client import UNREACHABLE, Client
from chaos.history import AgentEvent, Placed
from registry.clock import wall_ms

QUEUE = "chaos"
SKILLS = {"chaos": 5}
QUEUES_TOML = """\
# The chaos run's one queue: every site's tier-1 agents, short timers.
[queues.chaos]
skills = { chaos = 1 }
max_wait_s = 20
overflow = "voicemail"
ring_timeout_s = 3
wrap_up_s = 0.5
missed_offers_to_not_ready = 100

[[queues.chaos.steps]]
after_s = 0
tiers = [1]
trusts = ["inhouse", "partner"]
"""


@dataclass(frozen=True, slots=True)
class AgentPlan:
    agent_id: str
    site: str
    home: str
    capacity: int = 1


@dataclass(frozen=True, slots=True)
class LoadPlan:
    agents: tuple[AgentPlan, ...]
    nodes_by_site: Mapping[str, tuple[str, ...]]
    call_every_s: float = 0.7
    """Mean time between two calls (exponential)."""
    max_calls: int = 400
    talk_s: tuple[float, float] = (0.5, 3.0)
    patience_s: tuple[float, float] = (2.0, 25.0)
    """How long a caller waits for an answer before hanging up (abandoning)."""
    max_talk_s: float = 15.0
    """A call still talking after this long is hung up by its caller."""
    poll_s: float = 0.2
    wind_down_s: float = 20.0


def plan_load(
    nodes_by_site: Mapping[str, Sequence[str]], per_site: int = 2, *, seed: int = 0
) -> LoadPlan:
    """`per_site` agents homed on each site's nodes in turn; some agents take two calls."""
    rng = random.Random(seed)
    agents = []
    for site, nodes in sorted(nodes_by_site.items()):
        for i in range(per_site):
            capacity = 2 if rng.random() < 0.25 else 1
            agents.append(AgentPlan(f"{site}-agent{i + 1}", site, nodes[i % len(nodes)], capacity))
    return LoadPlan(tuple(agents), {s: tuple(n) for s, n in nodes_by_site.items()})


@dataclass(slots=True)
class _Talk:
    answered_at: float
    talk_s: float


@dataclass(slots=True)
class LoadStats:
    placed: list[Placed] = field(default_factory=list)
    refused: int = 0  # POST /calls not accepted (node down, draining, fenced)
    abandoned: int = 0
    events: list[AgentEvent] = field(default_factory=list)


class Load:
    """`await load.run(stop)`: drive until `stop` is set, then wind down (bounded)."""

    def __init__(self, client: Client, plan: LoadPlan, seed: int) -> None:
        self.client = client
        self.plan = plan
        self.rng = random.Random(seed)
        self.stats = LoadStats()
        self._winding_down = False

    @property
    def capacities(self) -> dict[str, int]:
        return {a.agent_id: a.capacity for a in self.plan.agents}

    async def run(self, stop: asyncio.Event) -> None:
        agents = [asyncio.create_task(self._agent(a)) for a in self.plan.agents]
        callers: set[asyncio.Task[None]] = set()
        try:
            await self._arrivals(stop, callers)
            self._winding_down = True
            deadline = time.monotonic() + self.plan.wind_down_s
            while callers and time.monotonic() < deadline:
                await asyncio.wait(callers, timeout=0.5)
                callers = {t for t in callers if not t.done()}
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        finally:
            for task in [*agents, *callers]:
                task.cancel()
            for task in [*agents, *callers]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- callers ------------------------------------------------------------------------------

    async def _arrivals(self, stop: asyncio.Event, callers: set[asyncio.Task[None]]) -> None:
        nodes = [
            n for site in sorted(self.plan.nodes_by_site) for n in self.plan.nodes_by_site[site]
        ]
        count = 0
        while not stop.is_set() and count < self.plan.max_calls:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), self.rng.expovariate(1 / self.plan.call_every_s)
                )
            if stop.is_set():
                break
            count += 1
            node = self.rng.choice(nodes)
            patience = self.rng.uniform(*self.plan.patience_s)
            callers.add(asyncio.create_task(self._caller(node, f"caller-{count}", patience)))
            callers -= {t for t in callers if t.done()}

    async def _caller(self, node: str, caller: str, patience_s: float) -> None:
        status, reply = await self.client.post(node, "/calls", {"queue": QUEUE, "caller": caller})
        if status != 201 or not isinstance(reply, dict):
            self.stats.refused += 1
            return
        call_id = str(reply["call_id"])
        self.stats.placed.append(Placed(call_id, node, wall_ms()))
        start = time.monotonic()
        talking_since: float | None = None
        while True:
            await asyncio.sleep(0.5)
            status, call = await self.client.get(node, f"/calls/{call_id}")
            if status == 200 and isinstance(call, dict):
                if call.get("outcome") is not None or call.get("state") == "ended":
                    return
                if call.get("state") == "talking":
                    talking_since = talking_since or time.monotonic()
                else:
                    talking_since = None
            waited = time.monotonic() - start
            too_long = talking_since is not None and (
                time.monotonic() - talking_since > self.plan.max_talk_s
            )
            if too_long or self._winding_down or (talking_since is None and waited > patience_s):
                status, _ = await self.client.post(node, f"/calls/{call_id}/hangup")
                if status == 200:
                    self.stats.abandoned += talking_since is None
                    return
                if status == 404:
                    return  # unknown here: the node restarted and closed it

    # -- agents --------------------------------------------------------------------------------

    def _event(self, agent: str, kind: str, call: str = "", detail: str = "") -> None:
        self.stats.events.append(AgentEvent(wall_ms(), agent, kind, call, detail))

    async def _agent(self, plan: AgentPlan) -> None:
        site_nodes = list(self.plan.nodes_by_site[plan.site])
        node = plan.home
        logged_in = False
        misses = 0
        talks: dict[str, _Talk] = {}
        while True:
            await asyncio.sleep(self.plan.poll_s)
            if not logged_in:
                body = {"skills": SKILLS, "tier": 1, "capacity": plan.capacity}
                status, _ = await self.client.post(node, f"/agents/{plan.agent_id}/login", body)
                if status == 200:
                    logged_in, misses, talks = True, 0, {}
                    self._event(plan.agent_id, "login", detail=node)
                else:
                    node = self._next(site_nodes, node)
                    await asyncio.sleep(0.5)
                continue
            status, reply = await self.client.get(node, f"/agents/{plan.agent_id}/offers")
            if status != 200 or not isinstance(reply, dict):
                misses += 1
                if status in (404, 503) or misses >= 15:  # session gone, fenced, node down
                    self._event(plan.agent_id, "lost", detail=f"{node} status {status}")
                    logged_in = False
                    if status == UNREACHABLE or status == 503:
                        node = self._next(site_nodes, node)
                continue
            misses = 0
            await self._handle(plan.agent_id, node, reply.get("offers", []), talks)

    async def _handle(
        self, agent: str, node: str, offers: list[dict[str, object]], talks: dict[str, _Talk]
    ) -> None:
        current = {str(o["call_id"]) for o in offers}
        for gone in set(talks) - current:
            del talks[gone]
        for offer in offers:
            call_id = str(offer["call_id"])
            base = f"/agents/{agent}/calls/{call_id}"
            if not offer.get("answered"):
                if call_id in talks:
                    continue  # answered a moment ago; the offer list lags
                if self.rng.random() < 0.05:
                    await self.client.post(node, f"{base}/reject")
                    self._event(agent, "reject", call_id)
                    continue
                status, _ = await self.client.post(node, f"{base}/answer")
                self._event(agent, "answer", call_id, str(status))
                if status == 200:
                    talks[call_id] = _Talk(time.monotonic(), self.rng.uniform(*self.plan.talk_s))
                continue
            talk = talks.setdefault(call_id, _Talk(time.monotonic(), 0.0))
            if time.monotonic() - talk.answered_at >= talk.talk_s or self._winding_down:
                status, _ = await self.client.post(node, f"{base}/hangup")
                self._event(agent, "hangup", call_id, str(status))
                if status == 200:
                    await self.client.post(node, f"/agents/{agent}/wrap-up/done")

    @staticmethod
    def _next(nodes: list[str], node: str) -> str:
        return nodes[(nodes.index(node) + 1) % len(nodes)]
