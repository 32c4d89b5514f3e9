"""The IVR over real node processes with the default configuration of `callmesh up`: a caller at
entry point "main" (the awk menu) presses 2 and an agent with billing skill at another site is
offered the call; the agent's keypad reaches the owner's hook; voicemails and prompts listed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from node.localcluster import LocalCluster, SitePlan
from tests.node.test_calls import call_state, offered
from tests.node.test_cluster import Client, eventually

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True) as local,  # the sample queues and entry "main"
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(local, http)
        await client.all_ready(20)
        yield client


@pytest.mark.slow
async def test_digit_2_at_entry_main_reaches_a_billing_agent_at_another_site(
    cluster: Client,
) -> None:
    client = cluster
    status, body = await client.post(
        "site-b-n1", "/agents/bo/login", {"skills": {"billing": 4}, "tier": 1}
    )
    assert status == 200, body

    async def known() -> bool:
        return await client.agent("site-a-n1", "bo") is not None

    await eventually(known, 5, "bo known at site-a")
    status, call = await client.post("site-a-n1", "/calls", {"entry": "main", "caller": "+4930123"})
    assert status == 201, call
    assert (call["state"], call["entry"]) == ("arriving", "main")
    call_id = call["call_id"]

    async def in_menu() -> bool:
        return bool((await call_state(client, "site-a-n1", call_id))["state"] == "ivr")

    await eventually(in_menu, 5, "the caller in the menu")
    status, body = await client.post("site-a-n1", f"/calls/{call_id}/digits", {"digits": "2"})
    assert status == 200, body
    offer = await offered(client, "site-b-n1", "bo", within_s=8)
    assert offer["call_id"] == call_id
    assert offer["queue"] == "billing"
    assert offer["customer"]["menu_choice"] == "billing"  # set by the hook, in-house scope
    status, body = await client.post("site-b-n1", f"/agents/bo/calls/{call_id}/answer")
    assert status == 200, body
    status, body = await client.post(
        "site-b-n1", f"/agents/bo/calls/{call_id}/digits", {"digits": "9#"}
    )
    assert status == 200, body
    shown = await call_state(client, "site-a-n1", call_id)
    details = [(e["kind"], e["detail"]) for e in shown["events"]]
    assert ("digits", "caller: 2") in details
    assert ("digits", "agent bo: 9#") in details
    assert ("action", "queue billing") in details
    status, body = await client.post("site-a-n1", f"/calls/{call_id}/digits", {"digits": "x"})
    assert (status, body["error"]) == (400, "digits_invalid")
    status, body = await client.post("site-a-n1", "/calls", {"entry": "nope"})
    assert (status, body["error"]) == (404, "entry_not_found")
    status, body = await client.post("site-a-n1", "/calls", {"entry": "main", "queue": "sales"})
    assert (status, body["error"]) == (400, "bad_request")
    await client.post("site-b-n1", f"/agents/bo/calls/{call_id}/hangup")
    status, record = await client.get("site-a-n1", f"/records/{call_id}")
    assert status == 200, record
    assert record["call"]["entry"] == "main"
    assert record["call"]["ivr_ms"] > 0
    assert any(e["kind"] == "hook" for e in record["events"])
    status, body = await client.get("site-a-n1", "/voicemails")
    assert (status, body) == (200, {"voicemails": []})
    status, body = await client.get("site-a-n1", "/prompts")
    assert status == 200
    names = {p["name"]: p for p in body["prompts"]}
    assert names["menu"]["seconds"] > 1
    assert names["hold"]["seconds"] > 1
