"""A SIP call's audio leg: plain RTP over UDP with G.711 (PCMU or PCMA) and RFC 4733 digits.

The leg has the same shape as media/peer.py's `PeerLeg`, so the media plane bridges it the same
way: `on_rtp(packet)` receives every audio RTP packet as it arrives (telephone-events are taken
out and reported as digits through `on_digit`), `send(packet)` sends an RTP packet as it is (the
bridge renumbers it onto this leg with a `media.rtp.Outbound(leg.ssrc, leg.payload_type,
clock_rate=8000, frame=160)`), `send_audio(payload)` numbers a payload itself (prompts, tones).

`RtpPorts` hands out the UDP ports of the configured range (even ports, RTP only, RFC 3550's
RTCP port is left unused): a port taken by another process is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

from media import rtp
from sip.dtmf import DigitDetector
from sip.sdp import Codec

log = logging.getLogger(__name__)

CLOCK_RATE = 8_000
FRAME = 160  # 20 ms at 8 kHz


class NoPortFree(Exception):
    code = "rtp_ports_exhausted"


class RtpLeg(asyncio.DatagramProtocol):
    """One call's RTP socket. Callbacks run in the datagram callback: they must not block."""

    def __init__(self, call_ref: str) -> None:
        self.call_ref = call_ref
        self.codec = Codec.PCMU
        self.telephone_event: int | None = None
        self.remote: tuple[str, int] | None = None
        self.held = False
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_digit: Callable[[str], None] | None = None
        self.ssrc = secrets.randbits(32)
        self.received = rtp.Receiving(CLOCK_RATE)
        self.sent_packets = 0
        self.bad_packets = 0
        self._outbound = rtp.Outbound(
            self.ssrc,
            Codec.PCMU.payload_type,
            first_sequence=secrets.randbits(16),
            first_timestamp=secrets.randbits(32),
            clock_rate=CLOCK_RATE,
            frame=FRAME,
        )
        self._digits = DigitDetector()
        self._transport: asyncio.DatagramTransport | None = None
        self.local_port = 0

    @property
    def payload_type(self) -> int:
        return self.codec.payload_type

    @property
    def clock_rate(self) -> int:
        return CLOCK_RATE

    def configure(
        self, codec: Codec, telephone_event: int | None, remote: tuple[str, int], held: bool
    ) -> None:
        """What the offer (or a re-INVITE's) negotiated."""
        self.codec = codec
        self._outbound.payload_type = codec.payload_type
        self.telephone_event = telephone_event
        self.remote = None if remote[1] == 0 or remote[0] == "0.0.0.0" else remote
        self.held = held

    # -- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports do not subclass DatagramTransport on Python 3.11
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.local_port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.remote is not None and addr[0] != self.remote[0]:
            return  # only the far end named in the SDP
        if rtp.is_rtcp(data):
            return
        try:
            header = rtp.parse(data)
        except rtp.MalformedRtp:
            self.bad_packets += 1
            return
        self.received.update(header, len(data), time.monotonic() * 1000)
        if header.payload_type == self.telephone_event and self.telephone_event is not None:
            digit = self._digits.feed(
                header.timestamp, data[header.payload_offset : header.payload_end]
            )
            if digit and self.on_digit is not None:
                self.on_digit(digit)
            return
        if header.payload_type == self.codec.payload_type and self.on_rtp is not None:
            self.on_rtp(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp leg %s: %s", self.call_ref, exc)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Send an RTP packet as it is (nothing while the far end holds the call)."""
        if self._transport is None or self.remote is None or self.held:
            return
        self._transport.sendto(packet, self.remote)
        self.sent_packets += 1

    def send_audio(self, payload: bytes, samples: int = FRAME) -> None:
        """Send one frame of encoded audio (this leg's codec) as the leg's next packet."""
        self.send(self._outbound.next_packet(payload, int(time.monotonic() * 1000), samples))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.on_rtp = self.on_digit = None


class RtpPorts:
    """The UDP ports RTP legs bind, from [low, high]; released when a leg closes."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low, self.high = low + low % 2, high
        self._next = self.low
        self.legs: dict[str, RtpLeg] = {}

    async def open(self, call_ref: str) -> RtpLeg:
        count = (self.high - self.low) // 2 + 1
        in_use = {leg.local_port for leg in self.legs.values()}
        for _ in range(count):
            port = self._next
            self._next = self.low if self._next + 2 > self.high else self._next + 2
            if port in in_use:
                continue
            try:
                leg = await self._bind(call_ref, port)
            except OSError:
                continue
            self.legs[call_ref] = leg
            return leg
        raise NoPortFree(f"no free RTP port in {self.low}-{self.high}")

    async def _bind(self, call_ref: str, port: int) -> RtpLeg:
        leg = RtpLeg(call_ref)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: leg, local_addr=(self.host, port))
        return leg

    def close(self, call_ref: str) -> None:
        leg = self.legs.pop(call_ref, None)
        if leg is not None:
            leg.close()

    def close_all(self) -> None:
        for call_ref in list(self.legs):
            self.close(call_ref)
