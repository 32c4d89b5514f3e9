"""`callmesh bench gossip`: how fast registry changes spread, and what gossip costs on the wire.

Four gossip nodes (two sites of two, the first of each its site's gateway) run the node's own
Gossip class with real gRPC over loopback, in this one process, with production timers; no etcd
is needed to measure the registry's sync. Arrival times are taken inside each replica, so no
polling delay is added to the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial

from node.gossip import Gossip, GossipTimers
from registry.records import AgentRecord, AgentState, NodeInfo, QueueSummary, Trust
from registry.registry import Registry

SITES = {"site-a": ["site-a-n1", "site-a-n2"], "site-b": ["site-b-n1", "site-b-n2"]}
SAMPLES = 200
HEAL_AGENTS = 10_000
TRAFFIC_AGENTS = 1_000
TRAFFIC_S = 20.0
TARGETS = {
    "converge_site_ms_p50": ("<=", 300),
    "converge_site_ms_p99": ("<=", 300),
    "converge_cross_site_ms_p50": ("<=", 1000),
    "converge_cross_site_ms_p99": ("<=", 1000),
    "heal_converge_ms": ("<=", 5000),
    "gossip_bytes_per_s_per_node": ("<=", 10_000),
}
STATES = [AgentState.AVAILABLE, AgentState.TALKING, AgentState.WRAP_UP, AgentState.RESERVED]


class TimedRegistry(Registry):
    """A replica that notes when a watched (agent, clock) first arrives."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.watch: tuple[str, int] | None = None
        self.arrived: float | None = None

    def apply(
        self,
        agents: Iterable[AgentRecord],
        queues: Iterable[QueueSummary],
        source: str,
        nodes: Iterable[NodeInfo] = (),
    ) -> int:
        changed = super().apply(agents, queues, source, nodes)
        if self.watch is not None and self.arrived is None:
            record = self.agent(self.watch[0])
            if record is not None and record.clock >= self.watch[1]:
                self.arrived = time.perf_counter()
        return changed


def timed(gossip: Gossip) -> TimedRegistry:
    registry = gossip.registry
    assert isinstance(registry, TimedRegistry)
    return registry


def _all_arrived(gossips: list[Gossip]) -> bool:
    return all(timed(g).arrived is not None for g in gossips)


def site_of(node_id: str) -> str:
    return node_id.rsplit("-", 1)[0]


@contextlib.asynccontextmanager
async def mesh(timers: GossipTimers) -> AsyncIterator[dict[str, Gossip]]:
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, Gossip] = {}
        for members in SITES.values():
            for node_id in members:
                gossip = Gossip(TimedRegistry(node_id), "127.0.0.1", 0, timers)
                nodes[node_id] = await stack.enter_async_context(gossip)
        gateways = {site: nodes[members[0]].address for site, members in SITES.items()}
        for node_id, gossip in nodes.items():
            site = site_of(node_id)
            peers = {nodes[n].address for n in SITES[site] if n != node_id}
            if node_id == SITES[site][0]:
                peers |= {address for s, address in gateways.items() if s != site}
            gossip.set_peers(peers)
        yield nodes


def write(gossip: Gossip, agent_id: str, state: AgentState) -> AgentRecord:
    record = gossip.registry.write_agent(
        AgentRecord(
            agent_id,
            gossip.registry.node_id,
            site_of(gossip.registry.node_id),
            Trust.INHOUSE,
            1,
            (("sales", 5),),
            state,
            state_since_ms=time.time_ns() // 1_000_000,
            epoch=1,
        )
    )
    gossip.changed()
    return record


async def until(check: Callable[[], bool], within_s: float) -> None:
    deadline = time.perf_counter() + within_s
    while not check():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"gossip did not converge within {within_s} s")
        await asyncio.sleep(0.001)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def converge(rnd: random.Random) -> dict[str, float]:
    in_site: list[float] = []
    cross: list[float] = []
    async with mesh(GossipTimers()) as nodes:
        for i in range(SAMPLES):
            writer = nodes[rnd.choice(list(nodes))]
            others = [g for g in nodes.values() if g is not writer]
            record = write(writer, f"agent-{writer.registry.node_id}-{i % 50}", rnd.choice(STATES))
            start = time.perf_counter()
            for gossip in others:
                timed(gossip).watch, timed(gossip).arrived = (record.agent_id, record.clock), None
            await until(partial(_all_arrived, others), 5)
            site = site_of(writer.registry.node_id)
            for gossip in others:
                arrived = timed(gossip).arrived
                assert arrived is not None
                same = site_of(gossip.registry.node_id) == site
                (in_site if same else cross).append((arrived - start) * 1000)
            await asyncio.sleep(rnd.uniform(0.005, 0.03))
    return {
        "converge_site_ms_p50": round(statistics.median(in_site), 1),
        "converge_site_ms_p99": round(percentile(in_site, 0.99), 1),
        "converge_cross_site_ms_p50": round(statistics.median(cross), 1),
        "converge_cross_site_ms_p99": round(percentile(cross, 0.99), 1),
    }


async def heal() -> float:
    async with mesh(GossipTimers()) as nodes:
        a1, a2, b1, b2 = (nodes[n] for n in [*SITES["site-a"], *SITES["site-b"]])
        for i in range(HEAL_AGENTS):
            write(b1 if i % 2 else b2, f"agent-{i:05d}", AgentState.AVAILABLE)
        await until(lambda: len(a2.registry) == HEAL_AGENTS, 30)
        a1.block([b1.address])
        b1.block([a1.address])
        await asyncio.sleep(0.1)
        for i in range(HEAL_AGENTS):
            write(b1 if i % 2 else b2, f"agent-{i:05d}", AgentState.TALKING)
        await until(
            lambda: b1.registry.digest().agent_buckets == b2.registry.digest().agent_buckets, 30
        )
        start = time.perf_counter()
        a1.block([])
        b1.block([])
        target = b1.registry.digest().agent_buckets
        await until(lambda: all(g.registry.digest().agent_buckets == target for g in (a1, a2)), 30)
        return (time.perf_counter() - start) * 1000


async def traffic(rnd: random.Random) -> float:
    async with mesh(GossipTimers()) as nodes:
        gossips = list(nodes.values())
        homes = {f"agent-{i:04d}": gossips[i % len(gossips)] for i in range(TRAFFIC_AGENTS)}
        for agent_id, gossip in homes.items():
            write(gossip, agent_id, AgentState.AVAILABLE)
        await until(lambda: all(len(g.registry) == TRAFFIC_AGENTS for g in gossips), 30)
        await asyncio.sleep(2.5)  # a digest round after the initial load
        before = sum(g.bytes_in + g.bytes_out for g in gossips)
        start = time.perf_counter()
        rate = TRAFFIC_AGENTS / 30.0  # each agent changes state every 30 s on average
        while (elapsed := time.perf_counter() - start) < TRAFFIC_S:
            agent_id = rnd.choice(list(homes))
            write(homes[agent_id], agent_id, rnd.choice(STATES))
            await asyncio.sleep(min(rnd.expovariate(rate), TRAFFIC_S - elapsed))
        spent = sum(g.bytes_in + g.bytes_out for g in gossips) - before
        return spent / (time.perf_counter() - start) / len(gossips)


def run(out: Callable[[str], None] = print) -> dict[str, float]:
    rnd = random.Random(11)
    figures = asyncio.run(converge(rnd))
    figures["heal_converge_ms"] = round(asyncio.run(heal()), 1)
    figures["gossip_bytes_per_s_per_node"] = round(asyncio.run(traffic(rnd)))
    out(
        f"gossip: 2 sites x 2 nodes, real gRPC on loopback in one process; {SAMPLES} changes; "
        f"heal with {HEAL_AGENTS} agents; {TRAFFIC_AGENTS} agents changing every 30 s on average"
    )
    for name, value in figures.items():
        op, target = TARGETS[name]
        met = value >= target if op == ">=" else value <= target
        out(f"  {name:28} {value:>10,}   target {op} {target:,}  {'ok' if met else 'MISSED'}")
    return figures
