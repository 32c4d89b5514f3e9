"""Real aiortc peers on loopback through the node's lean forwarding path, in one process."""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import pytest

from media import rtp
from media.forward import Bridge, Port
from media.peer import BadSdp, G711Codec, OpusCodec, PeerLeg, ToneClient, encode_tone
from media.tone import RATE, has_tone
from sip.leg import RtpLeg
from sip.sdp import Codec as SipCodec

HOST = "127.0.0.1"


async def heard(
    client: ToneClient, frequency: float, within_s: float = 8.0, *, mixed: bool = False
) -> None:
    """Wait until `client` hears `frequency` (as one of a mix of two tones when `mixed`)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        recent = client.recent(0.5)
        if len(recent) >= RATE // 2 and has_tone(
            recent, frequency, min_share=0.3 if mixed else 0.5
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{frequency} Hz not heard (frames {client.frames})")


async def connect(frequency: float) -> tuple[ToneClient, PeerLeg]:
    client = ToneClient(frequency, HOST)
    leg = await PeerLeg.answering(await client.offer(), HOST)
    assert "127.0.0.1" in leg.local_sdp
    await client.accept(leg.local_sdp)
    return client, leg


@pytest.mark.parametrize("transcode", [False, True])
async def test_two_peers_hear_each_others_tone_through_a_bridge(transcode: bool) -> None:
    caller, caller_leg = await connect(440)
    agent, agent_leg = await connect(1000)
    codecs = (OpusCodec(), OpusCodec()) if transcode else None
    bridge = Bridge(Port(caller_leg, "caller"), Port(agent_leg, "agent"), codecs=codecs)
    try:
        await heard(agent, 440)
        await heard(caller, 1000)
        assert bridge.caller.stats().packets > 10
        assert bridge.agent.stats().lost <= 2
        bridge.hold(True, encode_tone(600, 0.2))
        await heard(caller, 600)
        bridge.hold(False)
        await heard(caller, 1000)
    finally:
        bridge.close()
        for party in (caller, agent):
            await party.close()
        for leg in (caller_leg, agent_leg):
            await leg.close()


async def test_a_peer_that_closes_is_seen_by_the_leg() -> None:
    client, leg = await connect(440)
    gone = asyncio.Event()
    leg.on_closed = gone.set
    try:
        for _ in range(100):
            if leg.connected:
                break
            await asyncio.sleep(0.05)
        await client.close()
        await asyncio.wait_for(gone.wait(), 10)
    finally:
        await leg.close()


@pytest.mark.parametrize("sdp", ["", "v=0\r\nnonsense", "x" * 30_000])
async def test_a_bad_offer_is_refused_with_a_code(sdp: str) -> None:
    with pytest.raises(BadSdp) as caught:
        await PeerLeg.answering(sdp, HOST)
    assert caught.value.code == "bad_sdp"


class Carrier(asyncio.DatagramProtocol):
    """The far end of a SIP trunk's RTP: sends a G.711 tone, keeps what it hears (48 kHz)."""

    def __init__(self) -> None:
        self.codec = G711Codec(0)
        self.heard = array("h")
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        header = rtp.parse(data)
        self.heard.frombytes(self.codec.decode(data[header.payload_offset : header.payload_end]))

    async def play(self, to: tuple[str, int], frequency: float, seconds: float) -> None:
        payloads = encode_tone(frequency, 1.0, 0.2, payload_type=0)
        for i in range(int(seconds * 50)):
            packet = rtp.build(
                payloads[i % len(payloads)],
                payload_type=0,
                sequence=i,
                timestamp=160 * i,
                ssrc=0xCAFE,
            )
            assert self.transport is not None
            self.transport.sendto(packet, to)
            await asyncio.sleep(0.02)


async def test_a_g711_trunk_leg_and_a_webrtc_agent_hear_each_other() -> None:
    loop = asyncio.get_running_loop()
    trunk = RtpLeg("call-1")
    await loop.create_datagram_endpoint(lambda: trunk, local_addr=(HOST, 0))
    carrier = Carrier()
    transport, _ = await loop.create_datagram_endpoint(lambda: carrier, local_addr=(HOST, 0))
    trunk.configure(SipCodec.PCMU, None, transport.get_extra_info("sockname")[:2], False)
    agent, agent_leg = await connect(1000)
    bridge = Bridge(
        Port(trunk, "trunk"), Port(agent_leg, "agent"), codecs=(G711Codec(0), OpusCodec())
    )
    playing = asyncio.ensure_future(carrier.play((HOST, trunk.local_port), 440, 10))
    try:
        await heard(agent, 440)
        for _ in range(80):
            if len(carrier.heard) >= RATE and has_tone(carrier.heard[-RATE // 2 :], 1000):
                break
            await asyncio.sleep(0.1)
        assert has_tone(carrier.heard[-RATE // 2 :], 1000)
        assert bridge.caller.outbound.clock_rate == 8000
    finally:
        playing.cancel()
        bridge.close()
        trunk.close()
        transport.close()
        await agent.close()
        await agent_leg.close()
