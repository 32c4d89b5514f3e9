"""The pages in a real headless Chromium against real node processes (signalling only).

A caller on the click-to-call page at site A reaches an agent on the agent desk at site B; the
agent sees the customer's record before answering, answers, escalates with notes and wraps up;
the supervisor page shows the agent and the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, expect

from node.localcluster import LocalCluster, SitePlan
from tests.node.test_calls import call_state
from tests.node.test_cluster import Client, eventually
from tests.pages.browser import chromium

QUEUES = """
[queues.sales]
skills = { sales = 3 }
ring_timeout_s = 20
wrap_up_s = 60
max_wait_s = 300
record = true

[[queues.sales.steps]]
after_s = 0
tiers = [1, 2]
trusts = ["inhouse", "partner"]

[queues.escalations]
skills = { sales = 8 }
ring_timeout_s = 20
max_wait_s = 300

[[queues.escalations.steps]]
after_s = 0
tiers = [2]
trusts = ["inhouse"]

[queues.closed]
skills = { night_shift = 1 }
max_wait_s = 1
overflow = "voicemail"

[[queues.closed.steps]]
after_s = 0
tiers = [1]
trusts = ["inhouse"]

[queues.helpdesk]
skills = { support = 4 }
ring_timeout_s = 20
wrap_up_s = 60

[[queues.helpdesk.steps]]
after_s = 0
tiers = [1]
trusts = ["inhouse"]

[queues.experts]
skills = { support = 6 }
ring_timeout_s = 20
wrap_up_s = 60

[[queues.experts.steps]]
after_s = 0
tiers = [2]
trusts = ["inhouse"]
"""

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]
OWNER, HOME = "site-a-n1", "site-b-n1"
ANNA = "+4930123"  # the embedded directory's sample customer Anna Schmidt


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES) as local,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(local, http)
        await client.all_ready(20)
        yield client


def ui(client: Client, node: str, page: str) -> str:
    return client.url(node, f"/ui/{page}")


async def sign_in(page: Page, user: str, password: str = "") -> None:
    await page.get_by_label("Agent ID").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


@pytest.mark.slow
async def test_an_agent_takes_escalates_and_wraps_up_a_call_from_the_caller_page(
    cluster: Client, tmp_path: Path
) -> None:
    client = cluster
    async with (
        chromium(tmp_path, "agent") as agent,
        chromium(tmp_path, "caller") as caller,
    ):
        errors: list[str] = []
        for page in (agent, caller):
            page.on("pageerror", lambda error: errors.append(str(error)))

        passwords = client.cluster.credentials.passwords
        await agent.goto(ui(client, HOME, "agent"))
        await sign_in(agent, "ben", "not his password")
        await expect(agent.locator("#signin-error")).to_have_text(
            "unknown user or wrong password (login_failed)"
        )
        await sign_in(agent, "ben", passwords["ben"])
        state = agent.locator("#state-pill")
        await expect(state).to_have_text("Available")
        await agent.get_by_label("Not-ready reason").select_option("Lunch")
        await agent.get_by_role("button", name="Not ready").click()
        await expect(state).to_have_text("Not ready · Lunch")
        await agent.get_by_role("button", name="Available").click()
        await expect(state).to_have_text("Available")
        await expect(agent.locator("#events-status")).to_have_text("connected")

        async def ben_known_at_the_owner() -> bool:
            record = await client.agent(OWNER, "ben")
            return record is not None and record["state"] == "available"

        await eventually(ben_known_at_the_owner, 5, "ben available at site A")

        await caller.goto(ui(client, OWNER, "call"))
        await caller.get_by_role("textbox", name="Queue").fill("sales")
        await caller.get_by_label("Your number (caller ID)").fill(ANNA)
        await caller.get_by_label("Talk through this browser").uncheck()
        await caller.get_by_role("button", name="Call").click()
        await expect(caller.locator("#call-state")).to_have_text("Ringing an agent…")

        offer = agent.get_by_role("article", name="Incoming call from Anna Schmidt")
        await expect(offer).to_be_visible()
        await expect(agent.locator("#customer-name")).to_have_text("Anna Schmidt")
        await expect(agent.locator("#customer")).to_contain_text("DE-100-2001")
        await expect(state).to_have_text("Ringing")
        await offer.get_by_role("button", name="Answer").click()
        await expect(agent.locator("#call-caller")).to_have_text("Anna Schmidt")
        await expect(state).to_have_text("On a call")
        await expect(caller.locator("#call-state")).to_have_text("Connected")
        await expect(caller.locator("#call-detail")).to_have_text("You are talking with agent ben")

        reference = await caller.locator("#call-ref").inner_text()
        call_id = reference.removeprefix("Call reference ")
        await agent.get_by_role("button", name="Keypad").click()
        await agent.get_by_role("button", name="Key 5").click()
        await expect(agent.locator("#keyed")).to_have_text("5")
        await caller.get_by_role("button", name="Key 2").click()
        await expect(caller.locator("#keyed")).to_have_text("2")

        async def both_keypads_reached_the_call() -> bool:
            events = (await call_state(client, OWNER, call_id))["events"]
            keyed = {e["detail"] for e in events if e["kind"] == "digits"}
            return keyed == {"agent ben: 5", "caller: 2"}

        await eventually(both_keypads_reached_the_call, 3, "both keypads' digits at the owner")

        await agent.get_by_label("To queue").fill("escalations")
        await agent.get_by_label("Notes for the specialist").fill("wants a refund for March")
        await agent.get_by_role("button", name="Escalate").click()
        await expect(agent.locator("#wrapup")).to_be_visible()
        await expect(state).to_have_text("Wrap-up")
        live = await call_state(client, OWNER, call_id)
        assert (live["queue"], live["state"]) == ("escalations", "waiting")
        assert "ben: wants a refund for March" in live["notes"]
        await expect(caller.locator("#call-state")).to_have_text("Please hold")
        await expect(caller.locator("#call-detail")).to_contain_text("number 1 in the queue")

        await agent.get_by_role("button", name="Done, ready for calls").click()
        await expect(agent.locator("#phone-error")).to_contain_text("Choose a disposition")
        await agent.get_by_label("Disposition").select_option("escalated")
        await agent.get_by_role("button", name="Done, ready for calls").click()
        await expect(state).to_have_text("Available")
        await expect(agent.locator("#log")).to_contain_text("Wrapped up: Escalated")

        status, late = await client.post(OWNER, "/calls", {"queue": "closed", "caller": "+49307"})
        assert status == 201, late
        async with chromium(tmp_path, "supervisor") as boss:
            await boss.goto(ui(client, OWNER, "supervisor"))
            await boss.get_by_label("User").fill("sue")
            await boss.get_by_label("Password").fill(passwords["sue"])
            await boss.get_by_role("button", name="Sign in").click()
            row = boss.locator("#agents tr[data-agent=ben]")
            await expect(row).to_contain_text("site-b")
            await expect(row).to_contain_text("Available")
            site_a = boss.get_by_role("region", name="Site site-a")
            await expect(site_a).to_contain_text("escalations")
            await expect(boss.locator("#calls")).to_contain_text(ANNA)
            voicemail = boss.locator(f"#voicemails tr[data-call='{late['call_id']}']")
            await expect(voicemail).to_contain_text("+49307")
            await expect(voicemail).to_contain_text("closed")
            await boss.screenshot(path=str(tmp_path / "supervisor.png"), full_page=True)

        await caller.get_by_role("button", name="Hang up").click()
        await expect(caller.locator("#call-state")).to_have_text("Call ended")
        await expect(caller.locator("#call-detail")).to_have_text(
            "You hung up before an agent answered."
        )
        _, record = await client.get(OWNER, f"/records/{call_id}")
        assert record["call"]["outcome"] == "abandoned"
        assert [(leg["agent_id"], leg["disposition"]) for leg in record["legs"]] == [
            ("ben", "escalated")
        ]
        assert [(leg["agent_id"], leg["result"]) for leg in record["legs"]] == [
            ("ben", "escalated")
        ]
        await asyncio.sleep(0.2)
        assert errors == []


@pytest.mark.slow
async def test_a_rejected_call_goes_to_another_agent_who_consults_and_hands_over(
    cluster: Client, tmp_path: Path
) -> None:
    client = cluster
    passwords = client.cluster.credentials.passwords
    async with chromium(tmp_path, "desks") as bo:  # one browser, a tab (a session) per agent
        ann, sam = await bo.context.new_page(), await bo.context.new_page()
        errors: list[str] = []
        for page in (bo, ann, sam):
            page.on("pageerror", lambda error: errors.append(str(error)))
        await bo.goto(ui(client, HOME, "agent"))
        await sign_in(bo, "bo", passwords["bo"])  # tier 1
        await sam.goto(ui(client, HOME, "agent"))
        await sign_in(sam, "sam", passwords["sam"])  # tier 2: not for the helpdesk
        for page in (bo, sam):
            await expect(page.locator("#state-pill")).to_have_text("Available")

        async def both_known() -> bool:
            return all([await client.agent(OWNER, "bo"), await client.agent(OWNER, "sam")])

        await eventually(both_known, 5, "bo and sam known at the owner")
        status, call = await client.post(
            OWNER, "/calls", {"queue": "helpdesk", "caller": "+4940555"}
        )
        assert status == 201, call
        call_id = call["call_id"]

        offer = bo.get_by_role("article", name="Incoming call from Fatma Yilmaz")
        await offer.get_by_role("button", name="Reject").click()
        await expect(bo.locator("#log")).to_contain_text("Rejected the offer")
        await expect(bo.locator("#idle")).to_be_visible()

        await ann.goto(ui(client, OWNER, "agent"))
        await sign_in(ann, "ann", passwords["ann"])  # tier 1: the call comes to her
        offer = ann.get_by_role("article", name="Incoming call from Fatma Yilmaz")
        await offer.get_by_role("button", name="Answer").click()
        await expect(ann.locator("#call-caller")).to_have_text("Fatma Yilmaz")

        await ann.get_by_label("To queue").fill("experts")
        await ann.get_by_label("Warm").check()
        await ann.get_by_label("Notes for the specialist").fill("second SIM still dead")
        await ann.get_by_role("button", name="Escalate").click()
        await expect(ann.locator("#esc-state")).to_contain_text("Consulting experts")
        await ann.get_by_role("button", name="Hand over").click()
        await expect(ann.locator("#phone-error")).to_be_visible()  # not before sam answers

        consult = sam.get_by_role("article", name="Incoming call from Fatma Yilmaz")
        await expect(consult).to_contain_text("Escalated call")
        await expect(sam.locator("#customer [role=note]")).to_contain_text(
            "ann: second SIM still dead"
        )
        await consult.get_by_role("button", name="Answer").click()
        await expect(sam.locator("#call-caller")).to_have_text("Fatma Yilmaz")
        await ann.get_by_role("button", name="Hand over").click()
        await expect(ann.locator("#wrapup")).to_be_visible()
        live = await call_state(client, OWNER, call_id)
        assert (live["state"], live["agent_id"]) == ("talking", "sam")

        await sam.get_by_role("button", name="Hang up").click()
        await expect(sam.locator("#wrapup")).to_be_visible()
        _, record = await client.get(OWNER, f"/records/{call_id}")
        assert record["call"]["outcome"] == "completed"
        assert [(leg["agent_id"], leg["result"]) for leg in record["legs"]][-3:] == [
            ("ann", "handed over"),
            ("sam", "took the call"),
            ("sam", "completed"),
        ]
        assert errors == []
