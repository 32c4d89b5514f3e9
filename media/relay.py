"""The node-to-node media leg: plain RTP over UDP between two nodes' media addresses.

Signalled over the nodes' gRPC (node/media_rpc.py): the call's owner opens a relay and asks the
agent's home node to open its end, each learning the other's address. A datagram is taken only
from the peer address it was told, so a stray sender cannot speak into a call.

Plain RTP is for a trusted network only; between sites it should be SRTP keyed over the mTLS
gRPC channel (the owner would send a fresh master key in the open request).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

log = logging.getLogger(__name__)

RELAY_PAYLOAD_TYPE = 111  # Opus, as both nodes' WebRTC legs use it


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, relay: RelayLeg) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        relay = self._relay
        if relay.peer is not None and (addr[0], addr[1]) == relay.peer:
            sink = relay.on_rtp
            if sink is not None:
                sink(data)


class RelayLeg:
    """One end of a node-to-node leg: `await RelayLeg.open(host)`, then `connect(peer)`."""

    def __init__(self) -> None:
        self.on_rtp: Callable[[bytes], None] | None = None
        self.peer: tuple[str, int] | None = None
        self.packets_sent = 0
        self._ssrc = random.getrandbits(32)
        self._transport: asyncio.DatagramTransport | None = None
        self.address = ""

    @classmethod
    async def open(cls, host: str) -> RelayLeg:
        relay = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(relay), local_addr=(host, 0)
        )
        relay._transport = transport
        bound = transport.get_extra_info("sockname")
        relay.address = f"{bound[0]}:{bound[1]}"
        return relay

    def connect(self, peer: str) -> None:
        host, _, port = peer.rpartition(":")
        self.peer = (host.strip("[]"), int(port))

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def payload_type(self) -> int:
        return RELAY_PAYLOAD_TYPE

    def send(self, packet: bytes) -> None:
        if self._transport is not None and self.peer is not None:
            self._transport.sendto(packet, self.peer)
            self.packets_sent += 1

    def close(self) -> None:
        self.on_rtp = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
