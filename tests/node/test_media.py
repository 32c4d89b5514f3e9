"""Calls with real WebRTC audio: aiortc peers as caller and agent, node processes bridging.

Each side sends its own tone; each tone is found at the other side by its frequency. Loopback
needs the node's `media_host` (LocalCluster sets 127.0.0.1) and the same for the peers here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from media.peer import ToneClient
from media.recorder import read_sides
from media.tone import RATE, has_tone
from node.localcluster import LocalCluster, SitePlan
from tests.node.test_calls import offered
from tests.node.test_cluster import Client, eventually

HOST = "127.0.0.1"
CALLER_HZ, AGENT_HZ, MUSIC_HZ, EXPERT_HZ = 440.0, 1000.0, 425.0, 1500.0
QUEUES = """
[queues.sales]
skills = { sales = 3 }
ring_timeout_s = 3
wrap_up_s = 0.5
max_wait_s = 120
record = true

[queues.experts]
skills = { experts = 3 }
ring_timeout_s = 3
wrap_up_s = 0.5
max_wait_s = 120
"""
SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]


@pytest.fixture
async def media(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        yield client


async def hears(
    party: ToneClient, frequency: float, within_s: float = 8.0, *, mixed: bool = False
) -> None:
    """Wait until `party` hears `frequency` (as one of two mixed tones when `mixed`)."""
    deadline = time.monotonic() + within_s
    share = 0.3 if mixed else 0.5
    while time.monotonic() < deadline:
        recent = party.recent(0.4)
        if len(recent) >= int(RATE * 0.4) and has_tone(recent, frequency, min_share=share):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{frequency} Hz not heard ({party.frames} frames, {party.state})")


async def leg_statistics_are_kept(client: Client, call_id: str) -> None:
    async def measured() -> bool:
        status, body = await client.get("site-a-n1", f"/calls/{call_id}/media")
        assert status == 200, body
        legs = {leg["kind"]: leg for leg in body["legs"]}
        return (
            legs["caller"]["packets_received"] > 50
            and legs["caller"]["round_trip_ms"] is not None
            and legs["internode"]["packets_received"] > 50
        )

    await eventually(measured, 8, "packets and a round trip on the caller's leg")
    status, body = await client.get("site-b-n1", "/agents/bea/media")
    assert (status, body["call_id"]) == (200, call_id)
    assert body["leg"]["packets_received"] > 50
    assert body["leg"]["packets_lost"] <= 5
    async with client.http.get(client.url("site-a-n1", "/metrics")) as response:
        exposition = await response.text()
    assert 'callmesh_media_legs{kind="caller",site="site-a"} 1.0' in exposition
    assert 'callmesh_media_packets_received_total{kind="caller",site="site-a"}' in exposition
    assert "callmesh_media_round_trip_seconds_count" in exposition


def anywhere(samples: Any, frequency: float, window_s: float = 0.4) -> bool:
    size = int(RATE * window_s)
    return any(has_tone(samples[i : i + size], frequency) for i in range(0, len(samples), size))


async def agent_with_media(
    client: Client, node: str, agent: str, frequency: float = AGENT_HZ, skill: str = "sales"
) -> ToneClient:
    status, body = await client.post(
        node, f"/agents/{agent}/login", {"skills": {skill: 5}, "tier": 1}
    )
    assert status == 200, body
    phone = ToneClient(frequency, HOST)
    status, body = await client.post(node, f"/agents/{agent}/media", {"sdp": await phone.offer()})
    assert status == 200, body
    await phone.accept(body["sdp"])
    return phone


async def call_with_media(client: Client, node: str) -> tuple[ToneClient, dict[str, Any]]:
    caller = ToneClient(CALLER_HZ, HOST)
    body = {"queue": "sales", "caller": "+4930123", "sdp": await caller.offer()}
    status, reply = await client.post(node, "/calls", body)
    assert status == 201, reply
    await caller.accept(reply["sdp"])
    return caller, dict(reply)


async def known(client: Client, node: str, agent: str) -> bool:
    return await client.agent(node, agent) is not None


async def talk(
    client: Client, owner: str, home: str, agent: str
) -> tuple[ToneClient, ToneClient, dict[str, Any]]:
    phone = await agent_with_media(client, home, agent)
    await eventually(lambda: known(client, owner, agent), 5, f"{agent} known at {owner}")
    caller, call = await call_with_media(client, owner)
    offer = await offered(client, home, agent)
    assert offer["call_id"] == call["call_id"]
    status, body = await client.post(home, f"/agents/{agent}/calls/{call['call_id']}/answer")
    assert status == 200, body
    await hears(phone, CALLER_HZ)
    await hears(caller, AGENT_HZ)
    return caller, phone, call


async def test_tones_cross_between_a_caller_at_one_site_and_an_agent_at_another(
    media: Client,
) -> None:
    client = media
    caller, phone, call = await talk(client, "site-a-n1", "site-b-n1", "bea")
    try:
        call_id = call["call_id"]
        await leg_statistics_are_kept(client, call_id)
        status, body = await client.post(
            "site-b-n1", f"/agents/bea/calls/{call_id}/hold", {"hold": True}
        )
        assert status == 200, body
        await hears(caller, MUSIC_HZ)
        await client.post("site-b-n1", f"/agents/bea/calls/{call_id}/hold", {"hold": False})
        await hears(caller, AGENT_HZ)
        # the agent hangs up: the caller's connection closes; the agent's stays up
        status, body = await client.post("site-b-n1", f"/agents/bea/calls/{call_id}/hangup")
        assert status == 200, body
        await asyncio.wait_for(caller.closed.wait(), 10)
        assert phone.state == "connected"
        status, record = await client.get("site-a-n1", f"/records/{call_id}")
        assert record["call"]["outcome"] == "completed"
        # the owner recorded both sides: the caller left, the agent (and the music) right
        assert record["call"]["recording"] == f"recordings/{call_id}.wav"
        path = client.cluster.root / "site-a-n1-data" / record["call"]["recording"]
        left, right = read_sides(path)
        assert anywhere(left, CALLER_HZ)
        assert anywhere(right, AGENT_HZ)
        assert anywhere(right, MUSIC_HZ)
    finally:
        await caller.close()
        await phone.close()


@pytest.mark.slow
async def test_a_caller_who_closes_the_connection_hangs_up_and_the_agent_takes_the_next(
    media: Client,
) -> None:
    client = media
    caller, phone, call = await talk(client, "site-a-n1", "site-a-n1", "ann")
    try:
        await caller.close()  # the page goes away

        async def ended() -> bool:
            status, body = await client.get("site-a-n1", f"/calls/{call['call_id']}")
            return status == 200 and body.get("outcome") == "completed"

        await eventually(ended, 10, "the call ended by the caller's leaving")
        await client.post("site-a-n1", "/agents/ann/wrap-up/done")
        # the same agent connection carries the next call, with no new negotiation
        second, _ = await call_with_media(client, "site-a-n1")
        offer = await offered(client, "site-a-n1", "ann")
        status, _ = await client.post("site-a-n1", f"/agents/ann/calls/{offer['call_id']}/answer")
        assert status == 200
        await hears(phone, CALLER_HZ)
        await hears(second, AGENT_HZ)
        await second.close()
    finally:
        await phone.close()


async def test_bad_media_requests_get_clear_errors(media: Client) -> None:
    client = media
    status, body = await client.post("site-a-n1", "/calls", {"queue": "sales", "sdp": "v=0"})
    assert (status, body["error"]) == (400, "bad_sdp")
    status, body = await client.post("site-a-n1", "/calls", {"queue": "sales", "sdp": 5})
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await client.post("site-a-n1", "/agents/zed/media", {"sdp": "v=0"})
    assert (status, body["error"]) == (404, "session_not_here")
    await client.login("site-a-n1", "zed")
    status, body = await client.post("site-a-n1", "/agents/zed/media", {})
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await client.post("site-a-n1", "/agents/zed/calls/c-1/hold", {"hold": True})
    assert (status, body["error"]) == (404, "offer_not_found")


@pytest.mark.slow
async def test_a_warm_escalation_is_a_three_way_call_until_the_hand_over(
    media: Client,
) -> None:
    client = media
    caller, phone, call = await talk(client, "site-a-n1", "site-a-n1", "ann")
    expert = await agent_with_media(client, "site-b-n1", "eve", EXPERT_HZ, "experts")
    try:
        await eventually(lambda: known(client, "site-a-n1", "eve"), 5, "eve known at site-a")
        call_id = call["call_id"]
        status, body = await client.post(
            "site-a-n1",
            f"/agents/ann/calls/{call_id}/escalate",
            {"queue": "experts", "notes": "wants a refund", "mode": "warm"},
        )
        assert status == 200, body
        await offered(client, "site-b-n1", "eve")
        status, body = await client.post("site-b-n1", f"/agents/eve/calls/{call_id}/answer")
        assert status == 200, body
        # the consultation: everyone hears the other two
        await hears(caller, EXPERT_HZ, mixed=True)
        await hears(caller, AGENT_HZ, mixed=True)
        await hears(expert, CALLER_HZ, mixed=True)
        await hears(expert, AGENT_HZ, mixed=True)
        await hears(phone, EXPERT_HZ, mixed=True)
        status, body = await client.get("site-a-n1", f"/calls/{call_id}/media")
        assert body["conference"], body
        status, body = await client.post("site-a-n1", f"/agents/ann/calls/{call_id}/handover")
        assert status == 200, body
        await hears(caller, EXPERT_HZ)
        await hears(expert, CALLER_HZ)
    finally:
        for party in (caller, phone, expert):
            await party.close()
