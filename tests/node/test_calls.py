"""Calls end to end, signalling only, with real etcd and node processes in two sites."""

from __future__ import annotations

import asyncio
import csv
import io
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.localcluster import LocalCluster, SitePlan
from tests.node.test_cluster import Client, eventually

QUEUES = """
[queues.sales]
skills = { sales = 3 }
ring_timeout_s = 3
wrap_up_s = 0.5
max_wait_s = 120

[[queues.sales.steps]]
after_s = 0
tiers = [1, 2]
trusts = ["inhouse", "partner"]
"""

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 2)]


@pytest.fixture
async def calls(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        yield client


async def place(client: Client, node: str, caller: str = "+4930123") -> dict[str, Any]:
    status, body = await client.post(node, "/calls", {"queue": "sales", "caller": caller})
    assert status == 201, body
    return dict(body)


async def offers(client: Client, node: str, agent: str) -> list[dict[str, Any]]:
    status, body = await client.get(node, f"/agents/{agent}/offers")
    assert status == 200, body
    return list(body["offers"])


async def offered(client: Client, node: str, agent: str, within_s: float = 5) -> dict[str, Any]:
    async def check() -> bool:
        return bool(await offers(client, node, agent))

    await eventually(check, within_s, f"an offer for {agent}")
    return (await offers(client, node, agent))[0]


async def call_state(client: Client, node: str, call_id: str) -> dict[str, Any]:
    status, body = await client.get(node, f"/calls/{call_id}")
    assert status == 200, body
    return dict(body)


@pytest.mark.slow
async def test_a_call_at_site_a_is_answered_by_the_only_eligible_agent_at_site_b(
    calls: Client,
) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/bea/login", {"skills": {"sales": 5}, "tier": 1})
    await client.post("site-b-n1", "/agents/nop/login", {"skills": {"support": 9}, "tier": 1})
    await eventually(lambda: _known(client, "site-a-n1", "bea"), 3, "bea known at site-a")
    call = await place(client, "site-a-n1")
    offer = await offered(client, "site-b-n2", "bea")
    assert offer["call_id"] == call["call_id"]
    assert offer["caller"] == "+4930123"
    assert (await call_state(client, "site-a-n1", call["call_id"]))["state"] == "offered"
    status, body = await client.post("site-b-n2", f"/agents/bea/calls/{call['call_id']}/answer")
    assert status == 200, body
    talking = await call_state(client, "site-a-n1", call["call_id"])
    assert (talking["state"], talking["agent_id"], talking["agent_node"]) == (
        "talking",
        "bea",
        "site-b-n2",
    )
    status, body = await client.post("site-a-n1", f"/calls/{call['call_id']}/hangup")
    assert status == 200, body
    assert body["outcome"] == "completed"

    async def bea_free_again() -> bool:
        record = await client.agent("site-b-n2", "bea")
        return record is not None and record["state"] == "available"

    await eventually(bea_free_again, 5, "bea back to available after wrap-up")
    status, record = await client.get("site-a-n1", f"/records/{call['call_id']}")
    assert status == 200
    assert record["call"]["outcome"] == "completed"
    assert [(leg["agent_id"], leg["result"]) for leg in record["legs"]] == [("bea", "completed")]
    async with client.http.get(client.url("site-a-n1", "/records?format=csv")) as response:
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["call_id"], r["outcome"], r["agent_id"]) for r in rows] == [
        (call["call_id"], "completed", "bea")
    ]
    async with client.http.get(client.url("site-a-n1", "/metrics")) as response:
        exposition = await response.text()
    assert 'callmesh_calls_total{outcome="completed",queue="sales",site="site-a"} 1.0' in exposition
    assert 'callmesh_offers_total{result="accepted",site="site-a",tier="1"} 1.0' in exposition


async def _known(client: Client, node: str, agent: str) -> bool:
    return await client.agent(node, agent) is not None


@pytest.mark.slow
async def test_a_caller_hanging_up_during_the_offer_releases_the_agent_at_once(
    calls: Client,
) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/cal/login", {"skills": {"sales": 5}})
    await eventually(lambda: _known(client, "site-a-n1", "cal"), 3)
    call = await place(client, "site-a-n1")
    await offered(client, "site-b-n2", "cal")
    status, body = await client.post("site-a-n1", f"/calls/{call['call_id']}/hangup")
    assert status == 200, body
    assert body["outcome"] == "abandoned"
    assert await offers(client, "site-b-n2", "cal") == []
    record = await client.agent("site-b-n2", "cal")
    assert record is not None
    assert record["state"] == "available"
    assert record["active_calls"] == 0


@pytest.mark.slow
async def test_two_owners_racing_for_one_agent_one_wins_the_other_waits(calls: Client) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/dan/login", {"skills": {"sales": 5}})
    await eventually(lambda: _known(client, "site-a-n1", "dan"), 3)
    first, second = await asyncio.gather(
        place(client, "site-a-n1", "+1"), place(client, "site-b-n1", "+2")
    )
    await offered(client, "site-b-n2", "dan")
    await asyncio.sleep(1.0)  # routing retries twice meanwhile: still one reservation
    assert len(await offers(client, "site-b-n2", "dan")) == 1
    states = sorted(
        [
            (await call_state(client, "site-a-n1", first["call_id"]))["state"],
            (await call_state(client, "site-b-n1", second["call_id"]))["state"],
        ]
    )
    assert states == ["offered", "waiting"]
    record = await client.agent("site-b-n2", "dan")
    assert record is not None
    assert record["active_calls"] == 1


@pytest.mark.slow
async def test_a_free_agent_pulls_the_oldest_waiting_call_across_sites(calls: Client) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/eve/login", {"skills": {"sales": 5}})
    await client.post("site-b-n2", "/agents/eve/state", {"state": "not-ready", "reason": "break"})
    await eventually(lambda: _known(client, "site-a-n1", "eve"), 3)
    older = await place(client, "site-a-n1", "+older")
    await asyncio.sleep(0.2)
    await place(client, "site-b-n1", "+newer")

    async def both_summaries_known() -> bool:
        _, view = await client.get("site-b-n2", "/registry")
        return bool(sum(q["waiting"] for q in view["queues"]) == 2)

    await eventually(both_summaries_known, 3, "both waiting calls known at eve's node")
    status, body = await client.post("site-b-n2", "/agents/eve/state", {"state": "available"})
    assert status == 200, body
    offer = await offered(client, "site-b-n2", "eve")
    assert offer["call_id"] == older["call_id"]


@pytest.mark.slow
async def test_bad_call_requests_get_clear_errors(calls: Client) -> None:
    client = calls
    status, body = await client.post("site-a-n1", "/calls", {"queue": "nope"})
    assert status == 404
    assert body["error"] == "queue_not_found"
    status, body = await client.post("site-a-n1", "/calls", {"queue": 7})
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await client.get("site-a-n1", "/calls/does-not-exist")
    assert (status, body["error"]) == (404, "call_not_found")
    status, body = await client.post("site-a-n1", "/agents/zed/calls/x/answer")
    assert (status, body["error"]) == (404, "session_not_here")
    for profile in ({"tier": 1e400}, {"tier": 1.5}, {"capacity": "2"}, {"capacity": True}):
        status, body = await client.post("site-a-n1", "/agents/zed/login", profile)
        assert (status, body["error"]) == (400, "bad_request"), profile
        assert "must be a whole number" in body["message"]


@pytest.mark.slow
async def test_a_node_killed_mid_call_frees_the_agent_and_records_the_call_failed(
    calls: Client,
) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/fin/login", {"skills": {"sales": 5}})
    await eventually(lambda: _known(client, "site-a-n1", "fin"), 3)
    call = await place(client, "site-a-n1")
    await offered(client, "site-b-n2", "fin")
    status, body = await client.post("site-b-n2", f"/agents/fin/calls/{call['call_id']}/answer")
    assert status == 200, body
    await client.cluster.kill_node("site-a-n1")

    async def fin_not_on_the_call() -> bool:
        record = await client.agent("site-b-n2", "fin")
        return (
            record is not None
            and record["state"] in ("wrap-up", "available")
            and (record["active_calls"] == 0)
        )

    await eventually(fin_not_on_the_call, 12, "fin freed after the owner died")
    await client.cluster.start_node("site-a-n1")
    await client.all_ready(20)
    status, record = await client.get("site-a-n1", f"/records/{call['call_id']}")
    assert status == 200, record
    assert record["call"]["outcome"] == "failed"
    assert "restarted" in record["call"]["reason"]


@pytest.mark.slow
async def test_sigterm_drains_a_call_in_progress_and_takes_no_new_one(calls: Client) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/gil/login", {"skills": {"sales": 5}})
    await eventually(lambda: _known(client, "site-a-n1", "gil"), 3)
    call = await place(client, "site-a-n1")
    await offered(client, "site-b-n2", "gil")
    status, body = await client.post("site-b-n2", f"/agents/gil/calls/{call['call_id']}/answer")
    assert status == 200, body
    client.cluster.signal("site-a-n1", signal.SIGTERM)

    async def draining() -> bool:
        status, body = await client.get("site-a-n1", "/readyz")
        return status == 503 and any("draining" in r for r in body["reasons"])

    await eventually(draining, 3, "site-a-n1 not ready while draining")
    status, body = await client.get("site-a-n1", "/healthz")
    assert status == 200, body  # alive: Kubernetes must not kill it
    status, body = await client.post("site-a-n1", "/calls", {"queue": "sales"})
    assert (status, body["error"]) == (503, "node_draining")
    assert (await call_state(client, "site-a-n1", call["call_id"]))["state"] == "talking"
    status, body = await client.post("site-a-n1", f"/calls/{call['call_id']}/hangup")
    assert status == 200, body
    assert body["outcome"] == "completed"
    process = client.cluster.processes["site-a-n1"]
    assert await asyncio.wait_for(process.wait(), 10) == 0


@pytest.mark.slow
async def test_the_agent_page_gets_offers_and_releases_over_a_websocket(calls: Client) -> None:
    client = calls
    await client.post("site-b-n2", "/agents/ivy/login", {"skills": {"sales": 5}})
    await eventually(lambda: _known(client, "site-a-n1", "ivy"), 3)
    async with client.http.ws_connect(client.url("site-b-n2", "/agents/ivy/events")) as socket:
        hello = await socket.receive_json(timeout=3)
        assert (hello["type"], hello["agent"]["state"], hello["offers"]) == (
            "hello",
            "available",
            [],
        )
        call = await place(client, "site-a-n1", "+4930123")
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "offer" for e in seen):
            seen.append(await socket.receive_json(timeout=5))
        offer = next(e for e in seen if e["type"] == "offer")["offer"]
        assert offer["call_id"] == call["call_id"]
        assert offer["customer"]["customer_id"]  # the screen pop arrives with the offer
        assert any(e["type"] == "state" and e["agent"]["state"] == "reserved" for e in seen)
        _, view = await client.get("site-a-n1", "/supervisor")
        assert (
            view["sites"]["site-b"]["agents"].get("reserved", 0)
            + view["sites"]["site-b"]["agents"].get("available", 0)
            >= 1
        )
        await client.post("site-a-n1", f"/calls/{call['call_id']}/hangup")
        while True:
            event = await socket.receive_json(timeout=5)
            if event["type"] == "released":
                assert (event["call_id"], event["reason"]) == (call["call_id"], "cancelled")
                break
