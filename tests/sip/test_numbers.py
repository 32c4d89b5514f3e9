"""Dialled-number routing: the plan (pure) and the trunk refusing an unknown number with 404,
driven by real SIPp dialling two routed numbers and one that is not."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from node.callstate import Call
from sip import SipService, TrunkSettings
from sip.numbers import Route, UnknownNumber, parse_numbers
from tests.sip.sipp import SIPP, run_sipp
from tests.sip.test_metrics import sample
from tests.sip.test_trunk import FakeBoard, _rtp_range

TABLE = ("+4930100=entry:main", "+4930200 = queue:support")


def test_each_number_goes_to_its_route_and_an_unknown_one_is_refused() -> None:
    plan = parse_numbers(TABLE, Route(queue="sales"))
    assert plan.route("+4930100") == Route(entry="main")
    assert plan.route("+4930200") == Route(queue="support")
    with pytest.raises(UnknownNumber, match=r"\+4930999"):
        plan.route("+4930999")


def test_without_a_table_every_number_takes_the_default() -> None:
    plan = parse_numbers((), Route(entry="main"))
    assert plan.route("+4930999") == Route(entry="main")
    assert plan.route("") == Route(entry="main")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("+4930100", "not NUMBER=entry:NAME"),
        ("+4930100=voicemail", "not NUMBER=entry:NAME"),
        ("+4930100=queue:", "not NUMBER=entry:NAME"),
        ("49-30=queue:sales", "the number must be"),
        ("=queue:sales", "the number must be"),
    ],
)
def test_a_bad_line_is_named(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_numbers((entry,), Route(queue="sales"))


def test_a_number_routed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="routed twice"):
        parse_numbers(("+1=queue:a", "+1=entry:b"), Route(queue="sales"))


@pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")
async def test_sipp_dialling_two_numbers_reaches_two_routes_and_an_unknown_one_gets_404(
    tmp_path: Path,
) -> None:
    board = FakeBoard()
    plan = parse_numbers(TABLE, Route(queue="sales"))
    routed: list[tuple[str, str]] = []

    async def admit(caller: str, dialled: str, trunk: str) -> Call:
        route = plan.route(dialled)  # as node/app.py's admit does
        routed.append((dialled, str(route)))
        return await board.admit(caller, dialled, trunk)

    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),))
    refused = sample("callmesh_sip_calls_refused_total", reason="unknown_number")
    async with SipService("127.0.0.1", 0, settings, _rtp_range(), admit, board) as service:
        for number in ("+4930100", "+4930200"):
            run = await run_sipp("cancel", service.address, tmp_path, service=number, pause_ms=100)
            assert run.code == 0, run.output + run.messages
        unknown = await run_sipp("refused", service.address, tmp_path, service="+4930999")
    assert unknown.code == 0, unknown.output + unknown.messages
    assert "SIP/2.0 404" in unknown.messages
    assert "no route for the dialled number" in unknown.messages  # the Warning says why
    assert routed == [("+4930100", "entry:main"), ("+4930200", "queue:support")]
    assert len(board.origins) == 2  # the unknown number never became a call
    assert sample("callmesh_sip_calls_refused_total", reason="unknown_number") == refused + 1
