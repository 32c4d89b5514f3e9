"""SIP calls end to end: SIPp as the trunk of a real node (etcd and node processes, two sites),
the agent at the other site logged in and answering through the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from media.peer import ToneClient
from media.tone import has_tone
from node.etcd_server import free_port
from node.localcluster import LocalCluster, SitePlan, local_trunk_toml
from tests.node.test_calls import QUEUES, offered
from tests.node.test_cluster import Client, eventually
from tests.sip.sipp import SIPP, run_sipp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed"),
]

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]


@pytest.fixture
async def trunked(tmp_path: Path) -> AsyncIterator[tuple[Client, str]]:
    sip = local_trunk_toml() + 'sip_queue = "sales"\n'
    async with (
        LocalCluster(
            SITES, tmp_path, fast=True, queues_toml=QUEUES, extra_toml={"site-a-n1": sip}
        ) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        banner = cluster.banners["site-a-n1"]
        assert " sip sip:127.0.0.1:" in banner
        yield client, banner.rsplit("sip:", 1)[1]


async def record(client: Client, call_id: str) -> dict[str, Any]:
    status, body = await client.get("site-a-n1", f"/records/{call_id}")
    assert status == 200, body
    return dict(body)


async def test_a_trunk_call_is_answered_by_an_agent_at_another_site_and_the_bye_ends_it(
    trunked: tuple[Client, str], tmp_path: Path
) -> None:
    client, trunk = trunked
    await client.login("site-b-n1", "bea")
    await eventually(lambda: _known(client, "site-a-n1", "bea"), 5, "bea known at site-a")
    sipp = asyncio.create_task(run_sipp("call", trunk, tmp_path, service="+4930100"))
    offer = await offered(client, "site-b-n1", "bea", within_s=10)
    assert offer["caller"] == "+4930555"
    call_id = offer["call_id"]
    status, body = await client.post("site-b-n1", f"/agents/bea/calls/{call_id}/answer")
    assert status == 200, body
    run = await sipp
    assert run.code == 0, run.output + run.messages

    async def ended() -> bool:
        return bool((await record(client, call_id))["call"]["outcome"] == "completed")

    await eventually(ended, 5, "the call ended by the caller's BYE")
    done = await record(client, call_id)
    assert done["call"]["trunk"].startswith("sip:127.0.0.1:")
    assert done["call"]["dialled"] == "+4930100"
    assert [(leg["agent_id"], leg["result"]) for leg in done["legs"]] == [("bea", "completed")]
    assert any(e["kind"] == "digits" and e["detail"].endswith("1") for e in done["events"])


async def test_cancel_abandons_and_a_malformed_invite_leaves_the_node_serving(
    trunked: tuple[Client, str], tmp_path: Path
) -> None:
    client, trunk = trunked  # no agent logged in: calls wait
    run = await run_sipp("cancel", trunk, tmp_path, pause_ms=300)
    assert run.code == 0, run.output + run.messages
    status, body = await client.get("site-a-n1", "/records")
    assert status == 200, body
    calls = body["calls"]
    assert [(c["outcome"], c["dialled"]) for c in calls] == [("abandoned", "+4930100")]
    bad = await run_sipp("malformed", trunk, tmp_path)
    assert bad.code == 0, bad.output + bad.messages
    assert "SIP/2.0 400" in bad.messages
    assert (await run_sipp("options", trunk, tmp_path)).code == 0
    again = await run_sipp("cancel", trunk, tmp_path, pause_ms=100)
    assert again.code == 0, again.output + again.messages
    assert await client.ready("site-a-n1")


async def _known(client: Client, node: str, agent: str) -> bool:
    return await client.agent(node, agent) is not None


async def test_an_agent_on_an_external_phone_is_called_out_and_controls_the_call_by_api(
    tmp_path: Path,
) -> None:
    phone_port = free_port()
    sip = local_trunk_toml() + f'sip_outbound = "127.0.0.1:{phone_port}"\n'
    sites = [SitePlan("site-a", "inhouse", 1)]
    async with (
        LocalCluster(
            sites, tmp_path, fast=True, queues_toml=QUEUES, extra_toml={"site-a-n1": sip}
        ) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        phone = asyncio.create_task(
            run_sipp("phone", "", tmp_path, local_port=phone_port, pause_ms=300)
        )
        await client.login("site-a-n1", "bea")
        status, body = await client.post("site-a-n1", "/agents/bea/phone", {"number": "+4930777"})
        assert status == 200, body
        status, call = await client.post("site-a-n1", "/calls", {"queue": "sales", "caller": "+1"})
        assert status == 201, call
        offer = await offered(client, "site-a-n1", "bea")
        call_id = offer["call_id"]
        await asyncio.sleep(0.8)  # the phone rings, then is picked up
        status, body = await client.post("site-a-n1", f"/agents/bea/calls/{call_id}/answer")
        assert status == 200, body
        status, body = await client.post("site-a-n1", f"/agents/bea/calls/{call_id}/hangup")
        assert status == 200, body
        run = await phone  # the node's BYE ended the phone's call
        assert run.code == 0, run.output + run.messages
        assert "BYE sip:phone@" in run.messages
        done = await record(client, call_id)
        assert done["call"]["outcome"] == "completed"


async def test_a_trunk_call_at_the_menu_is_routed_by_its_rfc_4733_digit(tmp_path: Path) -> None:
    sip = local_trunk_toml() + 'sip_entry = "main"\n'
    menu = Path(__file__).parents[2] / "hooks" / "menu.awk"  # the sample menu: 1 for sales
    queues = (
        QUEUES + f'\n[entries.main]\nprogram = ["awk", "-f", "{menu}"]\nfallback = "queue:sales"\n'
    )
    async with (
        LocalCluster(
            SITES, tmp_path, fast=True, queues_toml=queues, extra_toml={"site-a-n1": sip}
        ) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        trunk = cluster.banners["site-a-n1"].rsplit("sip:", 1)[1]
        await client.login("site-b-n1", "bea")  # sales skill
        await eventually(lambda: _known(client, "site-a-n1", "bea"), 5, "bea known at site-a")
        sipp = asyncio.create_task(run_sipp("ivr", trunk, tmp_path, service="+4930200"))
        offer = await offered(client, "site-b-n1", "bea", within_s=10)
        assert offer["queue"] == "sales"
        call_id = offer["call_id"]
        status, body = await client.post("site-b-n1", f"/agents/bea/calls/{call_id}/answer")
        assert status == 200, body
        run = await sipp
        assert run.code == 0, run.output + run.messages
        done = await record(client, call_id)
        assert (done["call"]["entry"], done["call"]["dialled"]) == ("main", "+4930200")
        details = [(e["kind"], e["detail"]) for e in done["events"]]
        assert ("digits", "caller: 1") in details
        assert ("action", "queue sales") in details


async def test_audio_through_the_trunk_reaches_the_agents_page_and_comes_back(
    trunked: tuple[Client, str], tmp_path: Path
) -> None:
    """The agent's page (a WebRTC peer sending 600 Hz) talks to the trunk caller; SIPp echoes
    the caller's RTP, so the agent hears its own tone: agent -> node -> G.711 trunk leg ->
    SIPp -> trunk leg -> node -> agent, transcoded Opus <-> G.711 both ways."""
    client, trunk = trunked
    await client.login("site-a-n1", "ann")  # the agent on the trunk's node
    page = ToneClient(600, "127.0.0.1")
    try:
        status, body = await client.post(
            "site-a-n1", "/agents/ann/media", {"sdp": await page.offer()}
        )
        assert status == 200, body
        await page.accept(body["sdp"])
        sipp = asyncio.create_task(
            run_sipp("call", trunk, tmp_path, pause_ms=6000, extra=("-rtp_echo",))
        )
        offer = await offered(client, "site-a-n1", "ann", within_s=10)
        status, body = await client.post(
            "site-a-n1", f"/agents/ann/calls/{offer['call_id']}/answer"
        )
        assert status == 200, body

        async def hears_itself() -> bool:
            recent = page.recent(0.5)
            return len(recent) >= 24_000 and has_tone(recent, 600)

        await eventually(hears_itself, 5, "the agent's tone back through SIPp's echo")
        run = await sipp
        assert run.code == 0, run.output + run.messages
    finally:
        await page.close()
