"""A trunk call answered by an agent on an external phone carries G.711 both ways through the
node: SIPp as the trunk streams PCMU, a second SIPp as the agent's phone echoes it, and the
node's per-leg statistics show packets received on the trunk leg and on the phone leg and sent
on each (a real node and etcd, in process)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from loadtest.bench_sip import auto_answer, sip_node, write_tone
from node.etcd_server import free_port
from node.media_rpc import NoMedia
from node.sessions import Profile
from tests.node.test_cluster import eventually
from tests.sip.sipp import SIPP, run_sipp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed"),
]


async def test_audio_flows_both_ways_between_the_trunk_and_an_agents_phone(
    tmp_path: Path,
) -> None:
    phones = free_port()
    write_tone(tmp_path / "tone.ulaw")  # what bench_rtp.xml streams
    async with sip_node(tmp_path, phones) as node:
        assert node.sessions is not None
        assert node.sip is not None
        assert node.sip.phones is not None
        assert node.media is not None
        assert node.switchboard is not None
        await node.sessions.login("bea", Profile(tier=1, skills=(("sales", 5),)))
        node.sip.phones.register("bea", "+4930777")
        answering = auto_answer(node)  # bea answers once her phone is picked up
        phone = asyncio.create_task(
            run_sipp("bench_phone", "", tmp_path, local_port=phones, extra=("-rtp_echo",))
        )
        await asyncio.sleep(0.3)  # the phone listens
        caller = asyncio.create_task(run_sipp("bench_rtp", node.sip.address, tmp_path))
        media = node.media
        legs: dict[str, dict[str, Any]] = {}

        async def flowing() -> bool:
            calls = list(node.switchboard.calls) if node.switchboard else []
            if not calls:
                return False
            try:
                summary = media.call_media(calls[0])
            except NoMedia:
                return False
            legs.clear()
            legs.update({str(leg["kind"]): leg for leg in cast(list[Any], summary["legs"])})
            return all(
                legs.get(kind, {}).get("packets_received", 0) > 25 for kind in ("trunk", "phone")
            )

        await eventually(flowing, 15, "packets received on the trunk leg and the phone leg")
        assert legs["trunk"]["packets_sent"] > 0  # the phone's echo, back to the caller
        assert legs["phone"]["packets_sent"] > 0  # the caller's audio, to the phone
        for call_id in list(node.switchboard.calls):
            await node.switchboard.hangup_caller(call_id)
        run, echoed = await caller, await phone
        for task in answering:
            task.cancel()
    assert run.code == 0, run.output + run.messages
    assert echoed.code == 0, echoed.output + echoed.messages
