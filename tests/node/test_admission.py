"""Admission control: the pure decision, the CPU meter, and a node that refuses a media call
past its cap while signalling-only calls and calls in progress go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from media.peer import ToneClient
from node.admission import Admission, CpuMeter, Limits, Overloaded, refusal
from node.localcluster import LocalCluster, SitePlan
from tests.node.test_cluster import Client
from tests.node.test_media import CALLER_HZ, HOST, QUEUES, call_with_media


def test_a_call_is_refused_past_the_cpu_share_or_the_cap() -> None:
    limits = Limits(max_cpu_share=0.8, max_media_calls=10)
    assert refusal(limits, 0.5, 9) == ""
    assert refusal(limits, 0.81, 0) == "at 81% of a core (limit 80%)"
    assert refusal(limits, 0.5, 10) == "carrying 10 media calls (limit 10)"
    assert refusal(Limits(max_media_calls=0), 0.1, 10_000) == ""  # no cap
    assert refusal(Limits(max_cpu_share=0), 3.0, 0) == ""  # no CPU limit


def test_limits_are_checked() -> None:
    for bad in ({"max_cpu_share": -0.1}, {"max_cpu_share": 1.5}, {"max_media_calls": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Limits(**bad)


def test_the_meter_smooths_the_share_of_a_core() -> None:
    now, used = [0.0], [0.0]
    meter = CpuMeter(cpu=lambda: used[0], clock=lambda: now[0])
    for _ in range(30):  # a full core for 15 s
        now[0] += 0.5
        used[0] += 0.5
        meter.sample()
    assert meter.share == pytest.approx(1.0, abs=0.01)
    for _ in range(3):  # then idle: the share falls within a few samples
        now[0] += 0.5
        meter.sample()
    assert 0.3 < meter.share < 0.4


def test_a_refusal_names_the_node_why_and_where_else() -> None:
    refused: list[int] = []
    meter = CpuMeter()
    meter.share = 0.95
    gate = Admission(
        "n1", Limits(), meter, lambda: 3, lambda: ["127.0.0.1:8081"], lambda: refused.append(1)
    )
    with pytest.raises(Overloaded) as error:
        gate.check()
    assert "node n1 is at 95% of a core" in str(error.value)
    assert "127.0.0.1:8081" in str(error.value)
    assert refused == [1]
    meter.share = 0.2
    gate.check()


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[Client]:
    sites = [SitePlan("site-a", "inhouse", 2)]
    async with (
        LocalCluster(
            sites,
            tmp_path,
            fast=True,
            queues_toml=QUEUES,
            extra_toml={"site-a-n1": "max_media_calls = 1\n"},
        ) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        yield client


async def test_a_node_at_its_cap_refuses_new_media_calls_and_names_another_node(
    capped: Client,
) -> None:
    client = capped
    first, reply = await call_with_media(client, "site-a-n1")
    second = ToneClient(CALLER_HZ, HOST)
    try:
        body = {"queue": "sales", "caller": "+4930124", "sdp": await second.offer()}
        status, refused = await client.post("site-a-n1", "/calls", body)
        assert (status, refused["error"]) == (503, "node_overloaded"), refused
        assert "carrying 1 media calls (limit 1)" in refused["message"]
        assert client.cluster.plans["site-a-n2"].http in refused["message"]
        # a signalling-only call is admitted; so is a media call at the other node
        status, _ = await client.post("site-a-n1", "/calls", {"queue": "sales"})
        assert status == 201
        status, elsewhere = await client.post("site-a-n2", "/calls", body)
        assert status == 201, elsewhere
        # the first call goes on: still waiting for an agent, not failed
        status, call = await client.get("site-a-n1", f"/calls/{reply['call_id']}")
        assert (status, call["state"]) == (200, "waiting")
    finally:
        await first.close()
        await second.close()
