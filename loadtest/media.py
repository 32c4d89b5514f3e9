"""The load test's phones in media mode: a WebRTC leg per caller and per agent, each sending its
own tone, and the check that both sides of an answered call hear each other.

The legs are media/peer.py's lean `PeerLeg` (aiortc does ICE and DTLS there). One ticker task
sends every live leg the next 20 ms of its tone (Opus, encoded once per frequency); what a leg
receives is decoded only while a call is checked (media/tone.py: most of the power of the last
0.4 s at the other side's frequency). Callers send 400-1380 Hz, agents 1500-2980 Hz, in 20 Hz
steps (a 0.4 s block resolves 2.5 Hz): a caller bridged to another call's agent, or hearing its
own echo, fails the check.

Loopback: aioice leaves 127.0.0.1 out of its host candidates, so the legs gather their one host
candidate on HOST, as the nodes of a LocalCluster do (`media_host`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Iterable
from types import TracebackType

from media.peer import FRAME, OpusCodec, PeerLeg, encode_tone
from media.rtp import MalformedRtp, Outbound, parse
from media.tone import RATE, has_tone

HOST = "127.0.0.1"
PACKET_S = FRAME / RATE  # 20 ms
CHECK_S = 0.4
"""How much of the latest audio a check looks at."""
BLOCK = int(RATE * CHECK_S)
CHECK_EVERY_S = 0.2
VERIFIED = "verified"


def caller_hz(index: int) -> float:
    """The tone of caller `index` (its call's place in the run)."""
    return 400.0 + 20.0 * (index % 50)


def agent_hz(index: int) -> float:
    """The tone of agent `index` (its place in the scenario's agents)."""
    return 1500.0 + 20.0 * (index % 75)


class ToneLeg:
    """One caller's or agent's leg: sends its tone; decodes what it receives while listening."""

    def __init__(self, leg: PeerLeg, frequency: float, payloads: list[bytes]) -> None:
        self.leg = leg
        self.frequency = frequency
        self.packets_heard = 0
        """Packets received since `listen()`."""
        self._payloads = payloads
        self._sent = 0
        self._out = Outbound(leg.ssrc, leg.payload_type, first_sequence=1000)
        self._codec: OpusCodec | None = None
        self._pcm = array("h")
        leg.on_rtp = self._rtp

    def listen(self) -> None:
        """Decode what arrives from now on. The decoder is fresh and joins the other side's
        stream midway: Opus settles within about a second, so a check retries until then."""
        self._codec = OpusCodec()
        self._pcm = array("h")
        self.packets_heard = 0

    def deafen(self) -> None:
        self._codec = None
        self._pcm = array("h")

    def _rtp(self, packet: bytes) -> None:
        codec = self._codec
        if codec is None:
            return
        try:
            header = parse(packet)
        except MalformedRtp:
            return
        self.packets_heard += 1
        self._pcm.frombytes(codec.decode(packet[header.payload_offset : header.payload_end]))
        if len(self._pcm) > 2 * BLOCK:
            del self._pcm[: len(self._pcm) - BLOCK]

    def tick(self, now_ms: int) -> None:
        payload = self._payloads[self._sent % len(self._payloads)]
        self._sent += 1
        self.leg.send(self._out.next_packet(payload, now_ms))

    def hears(self, frequency: float) -> bool:
        """Whether the last CHECK_S s heard since `listen()` hold `frequency`."""
        return len(self._pcm) >= BLOCK and has_tone(self._pcm[-BLOCK:], frequency)


class Phones:
    """Every leg of one run and the ticker that feeds them; closes them all on exit."""

    def __init__(self, host: str = HOST) -> None:
        self._host = host
        self._legs: set[ToneLeg] = set()
        self._tones: dict[float, list[bytes]] = {}
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Phones:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for leg in list(self._legs):
            await self.close(leg)

    async def open(self, frequency: float) -> ToneLeg:
        """A new leg sending `frequency`; its offer is `leg.leg.local_sdp`, then `accept`."""
        payloads = self._tones.get(frequency)
        if payloads is None:
            payloads = self._tones[frequency] = encode_tone(frequency, 1.0)
        leg = ToneLeg(await PeerLeg.offering(self._host), frequency, payloads)
        self._legs.add(leg)
        return leg

    async def close(self, leg: ToneLeg) -> None:
        self._legs.discard(leg)
        await leg.leg.close()

    async def connected(self, legs: Iterable[ToneLeg], timeout_s: float) -> list[ToneLeg]:
        """The legs still not connected after at most `timeout_s` (none when all are)."""
        waiting = list(legs)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            waiting = [leg for leg in waiting if not leg.leg.connected]
        return waiting

    async def check(
        self,
        caller: ToneLeg,
        agent: ToneLeg,
        timeout_s: float,
        ended: asyncio.Event | None = None,
    ) -> str:
        """VERIFIED when, within `timeout_s` from now (the answer), the caller hears the
        agent's tone and the agent the caller's; otherwise what failed. Stops early when
        `ended` is set (the call is over)."""
        deadline = time.monotonic() + timeout_s
        caller_ok = agent_ok = False
        caller.listen()
        agent.listen()
        try:
            while True:
                await asyncio.sleep(CHECK_EVERY_S)
                caller_ok = caller_ok or caller.hears(agent.frequency)
                agent_ok = agent_ok or agent.hears(caller.frequency)
                if caller_ok and agent_ok:
                    return VERIFIED
                if time.monotonic() >= deadline or (ended is not None and ended.is_set()):
                    break
        finally:
            caller.deafen()
            agent.deafen()
        failed = []
        if not caller_ok:
            failed.append(
                f"the caller did not hear the agent's {agent.frequency:g} Hz "
                f"({caller.packets_heard} packets received)"
            )
        if not agent_ok:
            failed.append(
                f"the agent did not hear the caller's {caller.frequency:g} Hz "
                f"({agent.packets_heard} packets received)"
            )
        when = "before the call ended" if ended is not None and ended.is_set() else ""
        return "; ".join(failed) + (f" {when}" if when else f" within {timeout_s:g} s")

    async def _tick(self) -> None:
        """The next 20 ms of tone on every leg, paced in real time (a late loop skips ahead
        rather than sending a burst)."""
        due = time.monotonic()
        while True:
            now_ms = int(time.monotonic() * 1000)
            for leg in list(self._legs):
                leg.tick(now_ms)
            due += PACKET_S
            delay = due - time.monotonic()
            if delay < -0.2:
                due, delay = time.monotonic(), 0.0
            await asyncio.sleep(max(0.0, delay))
