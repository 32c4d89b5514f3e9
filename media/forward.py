"""Bridging two legs: RTP forwarded as it is (headers rewritten), or decoded and encoded again.

A `Port` is one leg as the forwarder sees it, for the leg's whole life: its receive statistics
and its one outgoing stream (the SSRC, sequence numbers and timestamps it sends with must never
go back, or SRTP refuses them), whatever bridge it is in. A `Bridge` joins a caller-side port
and an agent-side port: each packet from one side is parsed, counted, shown to the taps
(recording, detection: they decode what they need) and sent on the other side with its header
rewritten. Hold mutes both ways and plays music on hold to the caller side.

Everything runs in the legs' datagram callbacks: no task and no queue per packet.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from media.rtp import MalformedRtp, Outbound, Receiving, StreamStats, parse

log = logging.getLogger(__name__)

FRAME_S = 0.02


class Leg(Protocol):
    """What the forwarder needs of a leg (a WebRTC peer or a node-to-node relay)."""

    on_rtp: Callable[[bytes], None] | None

    @property
    def ssrc(self) -> int: ...

    @property
    def payload_type(self) -> int: ...

    def send(self, packet: bytes) -> None: ...


class Codec(Protocol):
    """Decode a leg's payloads to, and encode them from, signed 16-bit mono PCM at 48 kHz (20 ms
    frames), whatever the codec's own rate."""

    def decode(self, payload: bytes) -> bytes: ...

    def encode(self, pcm: bytes) -> list[bytes]: ...


Tap = Callable[[str, bytes], None]
"""Sees each payload that arrives on a bridged leg: (side "caller" or "agent", payload)."""


def _now_ms() -> float:
    return time.monotonic() * 1000


class Port:
    """One leg's forwarding state for its whole life."""

    def __init__(self, leg: Leg, kind: str) -> None:
        self.leg = leg
        self.kind = kind  # caller, agent, internode, trunk (a metrics label)
        rate = int(getattr(leg, "clock_rate", 48_000))  # 8000 for G.711 (SIP) legs
        self.outbound = Outbound(
            leg.ssrc,
            leg.payload_type,
            first_sequence=random.randrange(1 << 15),
            first_timestamp=random.randrange(1 << 31),
            clock_rate=rate,
            frame=rate // 50,
        )
        self.receiving = Receiving(rate)
        self.sent = 0  # packets the bridges sent on the leg
        self.round_trip_s: float | None = None  # from RTCP, when the leg's peer reports it

    def stats(self) -> StreamStats:
        return self.receiving.snapshot()

    def summary(self) -> dict[str, object]:
        """What the leg has carried, as the API shows it."""
        stats = self.stats()
        rtt = self.round_trip_s
        return {
            "kind": self.kind,
            "packets_received": stats.packets,
            "packets_lost": stats.lost,
            "jitter_ms": round(stats.jitter_s * 1000, 2),
            "packets_sent": self.sent,
            "round_trip_ms": None if rtt is None else round(rtt * 1000, 2),
        }


def _parse_or_none(packet: bytes) -> object:
    try:
        return parse(packet)
    except MalformedRtp:
        return None


class Bridge:
    """Audio both ways between a caller-side and an agent-side port: forwarded as it is, or,
    given `codecs` (the caller side's and the agent side's), decoded with the codec of the side
    it comes from and encoded with the codec of the side it goes to (transcoding, or G.711 to
    Opus)."""

    def __init__(
        self,
        caller: Port,
        agent: Port,
        *,
        codecs: tuple[Codec, Codec] | None = None,
        taps: Sequence[Tap] = (),
    ) -> None:
        self.caller, self.agent = caller, agent
        self.taps = list(taps)
        self.held = False
        self.forwarded = 0
        self._moh: Sequence[bytes] = ()
        self._moh_timer: asyncio.Handle | None = None
        self._moh_next = 0
        self._codecs = None if codecs is None else {"caller": codecs[0], "agent": codecs[1]}
        self._hook()

    def _hook(self) -> None:
        self.caller.leg.on_rtp = self._from_caller
        self.agent.leg.on_rtp = self._from_agent

    def _from_caller(self, packet: bytes) -> None:
        self._forward("caller", packet, self.caller, self.agent)

    def _from_agent(self, packet: bytes) -> None:
        self._forward("agent", packet, self.agent, self.caller)

    def _forward(self, side: str, packet: bytes, source: Port, target: Port) -> None:
        try:
            header = parse(packet)
        except MalformedRtp:
            return
        now = _now_ms()
        source.receiving.update(header, len(packet), now)
        if self.taps:
            payload = packet[header.payload_offset : header.payload_end]
            for tap in self.taps:
                tap(side, payload)
        if self.held:
            return
        if self._codecs is None:
            target.leg.send(target.outbound.rewrite(packet, header, int(now)))
            target.sent += 1
        else:
            pcm = self._codecs[side].decode(packet[header.payload_offset : header.payload_end])
            if not pcm:
                return
            encoder = self._codecs["agent" if side == "caller" else "caller"]
            for payload in encoder.encode(pcm):
                target.leg.send(target.outbound.next_packet(payload, int(now), source=-3))
                target.sent += 1
        self.forwarded += 1

    def swap(self, old: Port, new: Port) -> None:
        """A leg was replaced (an agent's page negotiated again): bridge the new one."""
        if self.caller is old:
            self.caller = new
        if self.agent is old:
            self.agent = new
        old.leg.on_rtp = None
        self._hook()

    def hold(self, on: bool, music: Sequence[bytes] = ()) -> None:
        """Mute both ways and play `music` (Opus payloads of 20 ms) to the caller, or resume."""
        self.held = on
        if self._moh_timer is not None:
            self._moh_timer.cancel()
            self._moh_timer = None
        if on and music:
            self._moh, self._moh_next = music, 0
            self._moh_timer = asyncio.get_running_loop().call_soon(self._play, time.monotonic())

    def _play(self, due: float) -> None:
        payload = self._moh[self._moh_next % len(self._moh)]
        self._moh_next += 1
        target = self.caller
        target.leg.send(target.outbound.next_packet(payload, int(_now_ms()), source=-2))
        target.sent += 1
        due += FRAME_S
        loop = asyncio.get_running_loop()
        self._moh_timer = loop.call_later(max(0.0, due - time.monotonic()), self._play, due)

    def close(self) -> None:
        self.hold(False)
        for port in (self.caller, self.agent):
            port.leg.on_rtp = None
