"""The SIP metrics move with real SIPp traffic: requests by method and final status class, the
active dialogs, refusals and malformed messages (node/metrics.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from node import metrics
from node.callstate import CallEvent
from sip import SipService
from tests.node.test_cluster import eventually
from tests.sip.sipp import SIPP, run_sipp
from tests.sip.test_trunk import FakeBoard, only_call, trunk

__all__ = ["sample", "trunk"]  # trunk: the fixture, used here


def sample(name: str, **labels: str) -> float:
    """One sample's value in GET /metrics's exposition (0 when absent)."""
    text = metrics.exposition()[0].decode()
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return 0.0


REQUESTS = "callmesh_sip_requests_total"


@pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")
async def test_a_sipp_call_options_and_a_malformed_invite_move_the_sip_metrics(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    before = {
        "invite_2xx": sample(REQUESTS, method="INVITE", status_class="2xx"),
        "ack": sample(REQUESTS, method="ACK", status_class="none"),
        "bye_2xx": sample(REQUESTS, method="BYE", status_class="2xx"),
        "options_2xx": sample(REQUESTS, method="OPTIONS", status_class="2xx"),
        "malformed": sample("callmesh_sip_malformed_total"),
    }
    sipp = asyncio.create_task(run_sipp("call", service.address, tmp_path, pause_ms=300))
    call_id = await only_call(board)

    async def one_active() -> bool:
        return sample("callmesh_sip_calls_active", direction="in") == 1

    await eventually(one_active, 5, "the call counted as active")
    board.apply(call_id, CallEvent.OFFER)
    board.apply(call_id, CallEvent.ANSWER)  # -> 200 OK to the trunk
    run = await sipp
    assert run.code == 0, run.output + run.messages
    assert (await run_sipp("options", service.address, tmp_path)).code == 0
    bad = await run_sipp("malformed", service.address, tmp_path)
    assert bad.code == 0, bad.output + bad.messages
    after = {
        "invite_2xx": sample(REQUESTS, method="INVITE", status_class="2xx"),
        "ack": sample(REQUESTS, method="ACK", status_class="none"),
        "bye_2xx": sample(REQUESTS, method="BYE", status_class="2xx"),
        "options_2xx": sample(REQUESTS, method="OPTIONS", status_class="2xx"),
        "malformed": sample("callmesh_sip_malformed_total"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "invite_2xx": 1,
        "ack": 1,
        "bye_2xx": 1,
        "options_2xx": 1,
        "malformed": 1,
    }
    assert sample("callmesh_sip_calls_active", direction="in") == 0  # the BYE ended it
