"""The trunk side against real SIPp, in process: the node's switchboard is a fake that keeps the
call's life (the same transitions as node/callstate.py, observers told after each)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from media.tone import dominant, sine
from node.admission import Overloaded
from node.callstate import Call, CallEvent, CallState, Outcome, transition
from node.etcd_server import free_port
from node.events import EventHub
from node.exchange import AgentAction
from sip import SipService, TrunkSettings, digest, g711
from sip.transport import Peer
from tests.node.test_cluster import eventually
from tests.sip.sipp import SIPP, run_sipp

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")


class FakeBoard:
    """The switchboard's side the trunk uses: arrive (via admit), hang-up, observers."""

    def __init__(self) -> None:
        self.observers: list[Callable[[Call, CallEvent, Call], None]] = []
        self.calls: dict[str, Call] = {}
        self.ended: dict[str, Call] = {}
        self.origins: dict[str, tuple[str, str]] = {}
        self.digits: dict[str, str] = {}
        self.arrived = asyncio.Event()

    async def admit(self, caller: str, dialled: str, trunk: str) -> Call:
        call = Call(f"c-{len(self.origins) + 1}", "n1", "sales", caller, 1)
        self.calls[call.call_id] = call
        self.origins[call.call_id] = (trunk, dialled)
        self.arrived.set()
        return call

    def apply(self, call_id: str, event: CallEvent) -> Call:
        before = self.calls[call_id]
        state, outcome = transition(before.state, event)
        after = replace(before, state=state, outcome=outcome)
        if state is CallState.ENDED:
            self.ended[call_id] = self.calls.pop(call_id)
            self.ended[call_id] = after
        else:
            self.calls[call_id] = after
        for observer in self.observers:
            observer(before, event, after)
        return after

    async def hangup_caller(self, call_id: str) -> Call:
        return self.apply(call_id, CallEvent.CALLER_HANGUP)

    def digit(self, call_id: str, digits: str) -> None:
        self.digits[call_id] = self.digits.get(call_id, "") + digits


async def only_call(board: FakeBoard) -> str:
    await asyncio.wait_for(board.arrived.wait(), 10)
    return next(iter(board.origins))


@pytest.fixture
async def trunk() -> AsyncIterator[tuple[SipService, FakeBoard]]:
    board = FakeBoard()
    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),))
    async with SipService(
        "127.0.0.1", 0, settings, _rtp_range(), board.admit, board, on_digits=board.digit
    ) as service:
        yield service, board


def _rtp_range() -> tuple[int, int]:
    low = free_port() & ~1
    return low, low + 40


async def test_a_call_rings_is_answered_with_the_agent_and_the_callers_bye_ends_it(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    sipp = asyncio.create_task(run_sipp("call", service.address, tmp_path, pause_ms=300))
    call_id = await only_call(board)
    assert board.origins[call_id] == (board.origins[call_id][0], "+4930100")
    assert board.origins[call_id][0].startswith("sip:127.0.0.1:")
    leg = service.leg(call_id)
    assert leg is not None
    assert leg.codec.name == "PCMU"
    assert leg.telephone_event == 101
    board.apply(call_id, CallEvent.OFFER)
    board.apply(call_id, CallEvent.ANSWER)  # -> 200 OK to the trunk
    run = await sipp
    assert run.code == 0, run.output + run.messages
    assert board.ended[call_id].outcome is Outcome.COMPLETED
    assert "SIP/2.0 180 Ringing" in run.messages
    assert "m=audio" in run.messages
    assert board.digits == {call_id: "1"}  # RFC 4733 from SIPp's pcap, once per event
    assert service.leg(call_id) is None  # the leg is closed with the dialog


async def test_cancel_before_the_answer_abandons_the_call(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    run = await run_sipp("cancel", service.address, tmp_path, pause_ms=200)
    assert run.code == 0, run.output + run.messages
    (call,) = board.ended.values()
    assert call.outcome is Outcome.ABANDONED


async def test_options_get_200_and_a_malformed_invite_400_and_the_next_call_is_served(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, _board = trunk
    assert (await run_sipp("options", service.address, tmp_path)).code == 0
    bad = await run_sipp("malformed", service.address, tmp_path)
    assert bad.code == 0, bad.output + bad.messages
    assert "SIP/2.0 400" in bad.messages
    run = await run_sipp("cancel", service.address, tmp_path, pause_ms=100)
    assert run.code == 0, run.output + run.messages
    assert service.trunk is not None
    assert service.trunk.malformed == 1


async def test_the_node_ending_the_call_sends_bye_to_the_trunk(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    sipp = asyncio.create_task(run_sipp("answered", service.address, tmp_path, pause_ms=10_000))
    call_id = await only_call(board)
    board.apply(call_id, CallEvent.OFFER)
    board.apply(call_id, CallEvent.ANSWER)
    await asyncio.sleep(0.5)
    board.apply(call_id, CallEvent.AGENT_HANGUP)  # -> BYE to the trunk
    run = await sipp
    assert run.code == 0, run.output + run.messages


async def test_an_address_not_allowed_gets_403(tmp_path: Path) -> None:
    board = FakeBoard()
    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("10.9.9.9/32"),))
    async with SipService("127.0.0.1", 0, settings, _rtp_range(), board.admit, board) as service:
        run = await run_sipp("refused", service.address, tmp_path)
    assert run.code == 0, run.output + run.messages
    assert "SIP/2.0 403" in run.messages
    assert not board.origins


async def test_an_overloaded_node_answers_503_and_keeps_no_dialog(tmp_path: Path) -> None:
    board = FakeBoard()

    async def overloaded(caller: str, dialled: str, trunk: str) -> Call:
        raise Overloaded("node n1 is at 93% of a core (limit 85%): it takes no new media calls")

    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),))
    async with SipService("127.0.0.1", 0, settings, _rtp_range(), overloaded, board) as service:
        run = await run_sipp("refused", service.address, tmp_path)
        assert run.code == 0, run.output + run.messages
        assert "SIP/2.0 503" in run.messages
        assert "takes no new media calls" in run.messages  # the Warning says why
        assert service.trunk is not None
        assert service.trunk.dialogs == {}


async def test_digest_challenge_then_the_authenticated_invite_is_taken(tmp_path: Path) -> None:
    board = FakeBoard()
    credentials = digest.Credentials("trunk1", "s3cret")
    settings = TrunkSettings(
        "127.0.0.1", (ipaddress.ip_network("127.0.0.0/8"),), credentials=credentials
    )
    async with SipService("127.0.0.1", 0, settings, _rtp_range(), board.admit, board) as service:
        run = await run_sipp(
            "auth", service.address, tmp_path, extra=("-au", "trunk1", "-ap", "s3cret")
        )
        wrong = await run_sipp(
            "auth", service.address, tmp_path, extra=("-au", "trunk1", "-ap", "nope"), timeout_s=4
        )
    assert run.code == 0, run.output + run.messages
    assert "SIP/2.0 401" in run.messages
    assert len(board.origins) == 1  # the wrong password never got a call in
    assert wrong.code != 0


async def test_answer_on_arrival_and_a_hold_re_invite_is_answered_recvonly(tmp_path: Path) -> None:
    board = FakeBoard()
    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),), answer="arrival")
    async with SipService("127.0.0.1", 0, settings, _rtp_range(), board.admit, board) as service:
        sipp = asyncio.create_task(run_sipp("hold", service.address, tmp_path, pause_ms=300))
        call_id = await only_call(board)
        run = await sipp
        assert run.code == 0, run.output + run.messages
    assert board.ended[call_id].outcome is Outcome.ABANDONED  # the BYE; no agent answered


class FakeDesk:
    def __init__(self) -> None:
        self.actions: list[tuple[str, str, AgentAction]] = []

    async def act(self, agent_id: str, call_id: str, action: AgentAction) -> object:
        self.actions.append((agent_id, call_id, action))
        return None


async def test_an_offer_to_an_agent_with_a_phone_calls_it_and_the_release_hangs_up(
    tmp_path: Path,
) -> None:
    board, hub, desk, phone_port = FakeBoard(), EventHub(), FakeDesk(), free_port()
    settings = TrunkSettings("127.0.0.1", (ipaddress.ip_network("127.0.0.1/32"),))
    async with SipService(
        "127.0.0.1",
        0,
        settings,
        _rtp_range(),
        board.admit,
        board,
        outbound=Peer("127.0.0.1", phone_port),
        events=hub,
        desk=desk,
    ) as service:
        assert service.phones is not None
        sipp = asyncio.create_task(
            run_sipp("phone", "", tmp_path, local_port=phone_port, pause_ms=200)
        )
        await asyncio.sleep(0.3)  # SIPp listens
        service.phones.register("bea", "+4930777")
        await asyncio.sleep(0)  # the line subscribes to bea's events
        hub.publish("bea", {"type": "offer", "offer": {"call_id": "c-9", "caller": "+1"}})

        async def picked_up() -> bool:
            leg = service.phones.leg("c-9", "bea") if service.phones else None
            return leg is not None and leg.remote is not None

        await eventually(picked_up, 5, "the phone picked up")
        hub.publish("bea", {"type": "released", "call_id": "c-9", "reason": "ended"})
        run = await sipp
    assert run.code == 0, run.output + run.messages
    assert desk.actions == []  # the agent answers and hangs up by API, not the phone


async def test_over_tcp_options_and_a_cancelled_call_are_served(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    tcp = ("-t", "t1")
    run = await run_sipp("options", service.address, tmp_path, extra=tcp)
    assert run.code == 0, run.output + run.messages
    run = await run_sipp("cancel", service.address, tmp_path, pause_ms=200, extra=tcp)
    assert run.code == 0, run.output + run.messages
    (call,) = board.ended.values()
    assert call.outcome is Outcome.ABANDONED


class Wire(asyncio.DatagramProtocol):
    """A raw UDP peer: what a broken or retransmitting trunk sends, and what comes back."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait(data)


RAW_INVITE = (
    "INVITE sip:+4930100@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKraw{n}\r\n"
    "From: <sip:+1@127.0.0.1>;tag=a{n}\r\nTo: <sip:+4930100@127.0.0.1>\r\n"
    "Call-ID: raw-{n}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
RAW_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 9 RTP/AVP 0\r\n"
)


async def test_a_retransmitted_invite_is_one_call_and_hostile_datagrams_do_not_stop_the_node(
    trunk: tuple[SipService, FakeBoard],
) -> None:
    service, board = trunk
    loop = asyncio.get_running_loop()
    transport, wire = await loop.create_datagram_endpoint(Wire, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    host, sip_port = service.address.rsplit(":", 1)
    to = (host, int(sip_port))

    def invite(n: int, via_port: int = port) -> bytes:
        return RAW_INVITE.format(port=via_port, n=n, length=len(RAW_SDP), sdp=RAW_SDP).encode()

    async def reply() -> str:
        return (await asyncio.wait_for(wire.got.get(), 3)).decode().split("\r\n")[0]

    try:
        for hostile in (b"\x00\xff" * 40, b"INVITE x", invite(1, via_port=99999999)):
            transport.sendto(hostile, to)  # dropped: nothing to answer them with
        transport.sendto(invite(2), to)
        assert await reply() == "SIP/2.0 100 Trying"
        transport.sendto(invite(2), to)  # the same INVITE again (a retransmission)
        replies = {await reply(), await reply()}
        assert "SIP/2.0 180 Ringing" in replies
        await asyncio.sleep(0.2)
        assert len(board.origins) == 1  # one call, however often the INVITE came
    finally:
        transport.close()


async def test_a_call_the_node_ends_before_the_answer_gets_480(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    sipp = asyncio.create_task(run_sipp("unavailable", service.address, tmp_path))
    call_id = await only_call(board)
    await asyncio.sleep(0.2)
    board.apply(call_id, CallEvent.OVERFLOW)  # waited past the queue's maximum
    run = await sipp
    assert run.code == 0, run.output + run.messages
    assert 'Warning: 399 callmesh "overflowed"' in run.messages


async def test_g711_audio_sent_on_the_leg_comes_back_from_sipps_echo_as_the_same_tone(
    trunk: tuple[SipService, FakeBoard], tmp_path: Path
) -> None:
    service, board = trunk
    sipp = asyncio.create_task(
        run_sipp("answered", service.address, tmp_path, pause_ms=10_000, extra=("-rtp_echo",))
    )
    call_id = await only_call(board)
    board.apply(call_id, CallEvent.OFFER)
    board.apply(call_id, CallEvent.ANSWER)
    leg = service.leg(call_id)
    assert leg is not None
    heard: list[bytes] = []
    leg.on_rtp = lambda packet: heard.append(packet[12:])  # plain 12-byte headers from SIPp
    tone = sine(1000, 8000 * 2, 8000, 0.3)  # 2 s at 8 kHz
    for i in range(0, len(tone), 160):  # 20 ms frames, paced
        leg.send_audio(g711.ulaw_encode(np.asarray(tone[i : i + 160], dtype=np.int16)))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    board.apply(call_id, CallEvent.AGENT_HANGUP)
    run = await sipp
    assert run.code == 0, run.output + run.messages
    assert len(heard) > 50  # of 100 frames sent, echoed back
    samples = g711.ulaw_decode(b"".join(heard[10:50])).tolist()
    assert dominant(samples, [400.0, 1000.0, 2000.0], 8000) == 1000.0
    assert leg.received.packets >= len(heard)
