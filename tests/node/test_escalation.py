"""A tier-1 partner agent escalates a call, with notes, to an in-house specialist (I5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from node.crm import SAMPLE_CUSTOMERS, Scope
from node.localcluster import LocalCluster, SitePlan
from tests.node.test_calls import offered, place
from tests.node.test_cluster import Client, eventually

QUEUES = """
[queues.sales]
skills = { sales = 1 }
ring_timeout_s = 5
wrap_up_s = 0.5

[[queues.sales.steps]]
after_s = 0
tiers = [1]
trusts = ["partner"]

[[queues.sales.steps]]
after_s = 60
tiers = [2]
trusts = ["inhouse"]

[queues.escalations]
skills = { sales = 5 }
ring_timeout_s = 5

[[queues.escalations.steps]]
after_s = 0
tiers = [2]
trusts = ["inhouse"]
"""

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("partner-c", "partner", 1)]


@pytest.fixture
async def partner_and_house(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        yield client


@pytest.mark.slow
async def test_partner_escalates_with_notes_and_never_sees_in_house_fields(
    partner_and_house: Client,
) -> None:
    client = partner_and_house
    customer = SAMPLE_CUSTOMERS[0]
    inhouse_only = {f.name for f in customer.fields if f.scope is Scope.INHOUSE}
    assert inhouse_only, "the sample customer needs in-house-only fields for this test"
    partner, house = "partner-c-n1", "site-a-n1"
    await client.post(partner, "/agents/pat/login", {"skills": {"sales": 4}, "tier": 1})
    await client.post(house, "/agents/spe/login", {"skills": {"sales": 9}, "tier": 2})

    async def both_known() -> bool:
        return all([await client.agent(house, "pat"), await client.agent(house, "spe")])

    await eventually(both_known, 3, "both agents known at the owner")
    call = await place(client, house, customer.phone)
    offer = await offered(client, partner, "pat")
    assert offer["call_id"] == call["call_id"]
    assert offer["customer"], "the partner gets a screen pop"
    assert not inhouse_only & set(offer["customer"]), offer["customer"]
    status, body = await client.post(partner, f"/agents/pat/calls/{call['call_id']}/answer")
    assert status == 200, body
    status, body = await client.post(
        partner,
        f"/agents/pat/calls/{call['call_id']}/escalate",
        {"queue": "escalations", "notes": "wants a refund for March"},
    )
    assert status == 200, body
    handed = await offered(client, house, "spe")
    assert handed["call_id"] == call["call_id"]
    assert "pat: wants a refund for March" in handed["notes"]
    assert inhouse_only <= set(handed["customer"]), handed["customer"]
    status, body = await client.post(house, f"/agents/spe/calls/{call['call_id']}/answer")
    assert status == 200, body

    async def pat_in_wrap_up_or_free() -> bool:
        record = await client.agent(partner, "pat")
        return record is not None and record["active_calls"] == 0

    await eventually(pat_in_wrap_up_or_free, 3, "pat released after escalating")
    status, body = await client.post(house, f"/calls/{call['call_id']}/hangup")
    assert status == 200, body
    assert (body["outcome"], body["escalations"]) == ("completed", 1)
    _, record = await client.get(house, f"/records/{call['call_id']}")
    assert [(leg["agent_id"], leg["result"]) for leg in record["legs"]] == [
        ("pat", "escalated"),
        ("spe", "completed"),
    ]
    # nothing the partner's node holds carries an in-house-only field
    _, view = await client.get(partner, "/registry")
    assert not any(name in str(view) for name in inhouse_only)


@pytest.mark.slow
async def test_warm_escalation_consults_then_hands_over(partner_and_house: Client) -> None:
    client = partner_and_house
    partner, house = "partner-c-n1", "site-a-n1"
    await client.post(partner, "/agents/pia/login", {"skills": {"sales": 4}, "tier": 1})
    await client.post(house, "/agents/sam/login", {"skills": {"sales": 9}, "tier": 2})

    async def both_known() -> bool:
        return all([await client.agent(house, "pia"), await client.agent(house, "sam")])

    await eventually(both_known, 3, "both agents known at the owner")
    call = await place(client, house, SAMPLE_CUSTOMERS[1].phone)
    call_id = call["call_id"]
    await offered(client, partner, "pia")
    assert (await client.post(partner, f"/agents/pia/calls/{call_id}/answer"))[0] == 200
    status, body = await client.post(
        partner,
        f"/agents/pia/calls/{call_id}/escalate",
        {"queue": "escalations", "notes": "line fault since Monday", "mode": "warm"},
    )
    assert status == 200, body
    consult = await offered(client, house, "sam")
    assert "pia: line fault since Monday" in consult["notes"]
    status, body = await client.post(partner, f"/agents/pia/calls/{call_id}/handover")
    assert status == 409, body  # not before the specialist has answered
    assert (await client.post(house, f"/agents/sam/calls/{call_id}/answer"))[0] == 200
    _, during = await client.get(house, f"/calls/{call_id}")
    assert (during["state"], during["agent_id"]) == ("talking", "pia")  # one agent on the call
    status, body = await client.post(partner, f"/agents/pia/calls/{call_id}/handover")
    assert status == 200, body
    _, after = await client.get(house, f"/calls/{call_id}")
    assert (after["agent_id"], after["agent_node"]) == ("sam", house)

    async def pia_released() -> bool:
        record = await client.agent(partner, "pia")
        return record is not None and record["active_calls"] == 0

    await eventually(pia_released, 3, "pia released after the hand-over")
    status, body = await client.post(house, f"/agents/sam/calls/{call_id}/hangup")
    assert status == 200, body
    _, record = await client.get(house, f"/records/{call_id}")
    assert record["call"]["outcome"] == "completed"
    assert [(leg["agent_id"], leg["kind"], leg["result"]) for leg in record["legs"]] == [
        ("pia", "agent", "handed over"),
        ("sam", "consult", "took the call"),
        ("sam", "agent", "completed"),
    ]
    assert all(leg["answered_ms"] > 0 for leg in record["legs"])
    _, billing = await client.get(house, "/records/billing")
    [line] = [b for b in billing["billing"] if b["customer_id"] == SAMPLE_CUSTOMERS[1].customer_id]
    assert (line["service"], line["consultations"], line["calls"]) == ("sales", 1, 1)
    consult = record["legs"][1]
    assert line["consult_s"] == round((consult["ended_ms"] - consult["answered_ms"]) / 1000, 3)
