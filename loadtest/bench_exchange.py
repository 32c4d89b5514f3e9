"""`callmesh bench routing` (the exchange part): reserve round trips and calls routed per second,
through real gRPC and a real etcd per site.

Three nodes run in this process (their own event loop, real sockets): site-a-n1 owns the calls,
site-a-n2 and site-b-n1 are the agents' home nodes, each site with its own etcd child process.
A reservation is one Reserve call from the owner's link to the home node's desk, which runs the
etcd transaction on the agent's slot and session keys and writes the agent reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from node.app import Node
from node.calls_rpc import NodeLink
from node.callstate import CallState
from node.config import NodeConfig
from node.etcd_server import EtcdServer
from node.exchange import CallInfo, Desk, ReleaseReason
from node.sessions import Profile

SAMPLES = 300
BURST_CALLS = 1_000
AGENTS_PER_HOME = 600
TARGETS = {
    "reserve_ms_p50_site": ("<=", 10.0),
    "reserve_ms_p99_site": ("<=", 10.0),
    "reserve_ms_p50_cross": ("<=", 15.0),
    "reserve_ms_p99_cross": ("<=", 15.0),
    "calls_routed_per_s": (">=", 500.0),
}
QUEUES = """
[queues.bench]
skills = { sales = 1 }
ring_timeout_s = 60
max_wait_s = 600
"""


@contextlib.asynccontextmanager
async def three_nodes(root: Path) -> AsyncIterator[dict[str, Node]]:
    (root / "queues.toml").write_text(QUEUES)
    async with contextlib.AsyncExitStack() as stack:
        etcds = {}
        for site in ("site-a", "site-b"):
            etcds[site] = await stack.enter_async_context(EtcdServer(site, root / site))
        plans = [("site-a-n1", "site-a"), ("site-a-n2", "site-a"), ("site-b-n1", "site-b")]
        nodes: dict[str, Node] = {}
        stop = asyncio.Event()
        runs = []
        for node_id, site in plans:
            config = NodeConfig.for_tests(node_id, site, (etcds[site].client_url,))
            config = NodeConfig.from_mapping(
                {
                    "node_id": node_id,
                    "site": site,
                    "etcd_endpoints": list(config.etcd_endpoints),
                    "http_port": 0,
                    "grpc_port": 0,
                    "lease_ttl_s": 5,
                    "gateway": True,
                    "data_dir": str(root / f"{node_id}-data"),
                    "queues_file": str(root / "queues.toml"),
                    "drain_timeout_s": 0,  # the burst's calls stay offered: do not wait for them
                }
            )
            nodes[node_id] = Node(config)
        gateways = {}
        for node_id, node in nodes.items():
            ready = asyncio.Event()
            runs.append(asyncio.create_task(node.run(stop, ready)))
            await ready.wait()
            gateways[node_id] = node.gossip.address
        for node_id, node in nodes.items():  # cross-site gossip between all three
            node.gossip.set_peers(a for n, a in gateways.items() if n != node_id)
        try:
            yield nodes
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)


async def login(node: Node, prefix: str, count: int) -> list[str]:
    sessions = node.sessions
    assert sessions is not None
    agents = [f"{prefix}-{i:04d}" for i in range(count)]
    for agent in agents:
        await sessions.login(agent, Profile(tier=1, skills=(("sales", 5),)))
    node.gossip.changed()
    return agents


async def round_trips(owner: Node, home: str, agents: list[str]) -> list[float]:
    link = NodeLink(owner.registry, timeout_s=2.0)  # gRPC to the home node, as routing does
    desk = link.desk(home)
    samples: list[float] = []
    try:
        await _reserve_release(owner, home, agents, desk, samples)
    finally:
        await link.close()
    return samples


async def _reserve_release(
    owner: Node, home: str, agents: list[str], desk: Desk, samples: list[float]
) -> None:
    for i in range(SAMPLES):
        agent = agents[i % len(agents)]
        call = CallInfo(f"bench-{home}-{i}", owner.config.node_id, "bench", "+1", 0)
        start = time.perf_counter()
        answer = await desk.reserve(call, agent, 60.0, 0.0)
        samples.append((time.perf_counter() - start) * 1000)
        if not answer.reserved:
            raise RuntimeError(f"reserve {agent} at {home} refused: {answer.reason}")
        await desk.release(call.call_id, agent, ReleaseReason.CANCELLED)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="callmesh-bench-") as root:
        async with three_nodes(Path(root)) as nodes:
            owner = nodes["site-a-n1"]
            local = await login(nodes["site-a-n2"], "a", AGENTS_PER_HOME)
            remote = await login(nodes["site-b-n1"], "b", AGENTS_PER_HOME)
            deadline = time.monotonic() + 30
            while len(owner.registry.agents()) < 2 * AGENTS_PER_HOME:
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not reach the owner by gossip")
                await asyncio.sleep(0.05)
            site = await round_trips(owner, "site-a-n2", local)
            cross = await round_trips(owner, "site-b-n1", remote)
            await asyncio.sleep(0.5)  # let the releases settle and gossip
            board = owner.switchboard
            assert board is not None
            start = time.perf_counter()
            calls = [await board.arrive("bench", f"+{i}") for i in range(BURST_CALLS)]
            deadline = time.monotonic() + 60
            while any(board.calls[c.call_id].state is CallState.WAITING for c in calls):
                if time.monotonic() > deadline:
                    raise RuntimeError("the burst was not routed within 60 s")
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - start
    return {
        "reserve_ms_p50_site": pct(site, 0.5),
        "reserve_ms_p99_site": pct(site, 0.99),
        "reserve_ms_p50_cross": pct(cross, 0.5),
        "reserve_ms_p99_cross": pct(cross, 0.99),
        "calls_routed_per_s": round(BURST_CALLS / elapsed, 1),
        "_site_mean": round(statistics.mean(site), 2),
    }


def exchange(out: Callable[[str], None] = print) -> dict[str, float]:
    figures = asyncio.run(measure())
    figures.pop("_site_mean")
    out(
        f"reservation exchange: 3 nodes in one process, an etcd per site; {SAMPLES} reserve + "
        f"release round trips per path; a burst of {BURST_CALLS} calls over "
        f"{2 * AGENTS_PER_HOME} free agents"
    )
    for name, value in figures.items():
        op, target = TARGETS[name]
        met = value >= target if op == ">=" else value <= target
        out(f"  {name:22} {value:>10,}   target {op} {target:,}  {'ok' if met else 'MISSED'}")
    return figures
