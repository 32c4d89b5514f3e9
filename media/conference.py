"""A conference of three or more legs (a warm escalation: the caller, the agent and the consulted
agent): each party hears the sum of the others.

Unlike a bridge, a conference needs samples: each leg's packets are decoded as they arrive and
kept in a short queue per party; every 20 ms one frame of each is mixed (`mix`, pure) and
encoded for each party with that party's codec, minus its own voice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from media.forward import Codec, Port
from media.rtp import MalformedRtp, parse

FRAME = 960  # samples per 20 ms at 48 kHz
FRAME_S = 0.02
QUEUE_FRAMES = 5  # at most this many frames wait per party (100 ms); older ones are dropped
SOURCE = -4  # the conference as a source on each port's outgoing stream


def mix(frames: Mapping[str, bytes]) -> dict[str, bytes]:
    """For each party, the others' frames summed (16-bit, clipped). A party without a frame
    this time is passed as b"" and counts as silence."""
    arrays = {
        party: np.frombuffer(pcm.ljust(FRAME * 2, b"\0")[: FRAME * 2], dtype="<i2").astype(np.int32)
        for party, pcm in frames.items()
    }
    total = sum(arrays.values(), np.zeros(FRAME, dtype=np.int32))
    return {
        party: np.clip(total - own, -32768, 32767).astype("<i2").tobytes()
        for party, own in arrays.items()
    }


class Conference:
    """Three or more ports, each with its codec; `close()` unhooks them."""

    def __init__(self, ports: Mapping[str, Port], codecs: Mapping[str, Codec]) -> None:
        self.ports = dict(ports)
        self._codecs = dict(codecs)
        self._queues: dict[str, deque[bytes]] = {p: deque(maxlen=QUEUE_FRAMES) for p in ports}
        self.held = False
        for party, port in self.ports.items():
            port.leg.on_rtp = self._receiver(party)
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            FRAME_S, self._tick, time.monotonic() + FRAME_S
        )

    def _receiver(self, party: str) -> Callable[[bytes], None]:
        port, codec, queue = self.ports[party], self._codecs[party], self._queues[party]

        def received(packet: bytes) -> None:
            try:
                header = parse(packet)
            except MalformedRtp:
                return
            port.receiving.update(header, len(packet), time.monotonic() * 1000)
            pcm = codec.decode(packet[header.payload_offset : header.payload_end])
            if pcm:
                queue.append(pcm)

        return received

    def _tick(self, due: float) -> None:
        frames = {
            party: (queue.popleft() if queue else b"") for party, queue in self._queues.items()
        }
        if any(frames.values()):
            now_ms = int(time.monotonic() * 1000)
            for party, pcm in mix(frames).items():
                port = self.ports[party]
                for payload in self._codecs[party].encode(pcm):
                    port.leg.send(port.outbound.next_packet(payload, now_ms, source=SOURCE))
                    port.sent += 1
        due += FRAME_S
        delay = max(0.0, due - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick, due)

    def swap(self, old: Port, new: Port) -> None:
        """A party's leg was replaced (an agent's page negotiated again)."""
        for party, port in self.ports.items():
            if port is old:
                old.leg.on_rtp = None
                self.ports[party] = new
                new.leg.on_rtp = self._receiver(party)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for port in self.ports.values():
            port.leg.on_rtp = None
