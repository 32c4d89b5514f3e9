"""The cuts and faults the nemesis uses: a cut (by the node's fault injection, or by routes in the
sites' network namespaces) stops the call exchange as well as gossip, and a skewed registry clock
makes the node's writes refused elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chaos.client import Client
from chaos.load import QUEUE, QUEUES_TOML, SKILLS
from chaos.runner import credentials_of
from node.localcluster import LocalCluster, SitePlan
from node.netns import unavailable
from tests.node.test_cluster import eventually

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]
A, B = "site-a-n1", "site-b-n1"


WHY_NOT = unavailable()


@pytest.fixture
async def pair(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[LocalCluster, Client]]:
    """Two one-node sites, on loopback or (param True) in their own network namespaces."""
    netns = bool(getattr(request, "param", False))
    if netns and WHY_NOT is not None:
        pytest.skip(f"network namespaces unavailable: {WHY_NOT}")
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES_TOML, netns=netns) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
    ):
        client = Client(
            {n: p.http for n, p in cluster.plans.items()}, http, credentials_of(cluster)
        )

        async def ready() -> bool:
            return all([(await client.get(n, "/readyz"))[0] == 200 for n in cluster.plans])

        await eventually(ready, 20, "both nodes ready")
        yield cluster, client


async def known_at(client: Client, node: str, agent: str) -> bool:
    status, view = await client.get(node, "/registry")
    return status == 200 and any(a["agent_id"] == agent for a in view["agents"])


@pytest.mark.parametrize("pair", [False, True], ids=["faults", "netns"], indirect=True)
async def test_a_cut_stops_the_call_exchange_until_healed(
    pair: tuple[LocalCluster, Client],
) -> None:
    cluster, client = pair
    status, _ = await client.post(B, "/agents/bea/login", {"skills": SKILLS, "tier": 1})
    assert status == 200
    await eventually(lambda: known_at(client, A, "bea"), 5, "bea known at site-a")
    if cluster.namespaces is not None:  # routes between the sites' namespaces
        assert cluster.plans[A].grpc.startswith(cluster.namespaces.address("site-a") + ":")
        await cluster.namespaces.cut("site-a", "site-b")
    else:  # the nodes' fault injection
        for node, other in ((A, B), (B, A)):
            status, body = await client.post(
                node, "/debug/faults", {"block": [cluster.plans[other].grpc]}
            )
            assert status == 200
            assert body["blocked"] == [cluster.plans[other].grpc]
    status, call = await client.post(A, "/calls", {"queue": QUEUE, "caller": "c"})
    assert status == 201
    await asyncio.sleep(1.5)  # site-a still sees bea available, but cannot reach her node
    status, offers = await client.get(B, "/agents/bea/offers")
    assert offers["offers"] == []
    if cluster.namespaces is not None:
        await cluster.namespaces.heal("site-a", "site-b")
    for node in (A, B):
        await client.post(node, "/debug/faults", {"block": []})

    async def offered() -> bool:
        _, offers = await client.get(B, "/agents/bea/offers")
        return [o["call_id"] for o in offers["offers"]] == [call["call_id"]]

    await eventually(offered, 8, "the call offered to bea once the cut heals")


async def test_a_skewed_clock_gets_the_nodes_writes_refused_and_bad_offsets_are_refused(
    pair: tuple[LocalCluster, Client],
) -> None:
    _, client = pair
    status, body = await client.post(A, "/debug/faults", {"clock_offset_ms": 3_000})
    assert status == 200
    assert body["clock_offset_ms"] == 3_000
    await client.post(A, "/agents/ann/login", {"skills": SKILLS, "tier": 1})
    await asyncio.sleep(1.5)
    assert not await known_at(client, B, "ann")  # stamped 3 s ahead: refused at site-b
    await client.post(A, "/debug/faults", {"clock_offset_ms": 0})
    await eventually(lambda: known_at(client, B, "ann"), 8, "ann known once the clocks agree")
    for bad in ("3000", 10**9, True):
        status, body = await client.post(A, "/debug/faults", {"clock_offset_ms": bad})
        assert status == 400, bad
        assert body["error"] == "bad_request"
