"""How a node reaches other nodes over gRPC, and how it serves them: the one place channels and
listening ports are made, so transport security and test-only link conditions live here."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

MAX_GRPC_MESSAGE = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
]


@dataclass(frozen=True, slots=True)
class Transport:
    """Channel and port factory for node-to-node gRPC (gossip and the call exchange)."""

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel to another node's gRPC address (host:port)."""
        return grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)

    def server(self) -> grpc.aio.Server:
        return grpc.aio.server(options=GRPC_OPTIONS)

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on host:port; returns the bound port, 0 when it could not bind."""
        port: int = server.add_insecure_port(address)
        return port


PLAIN = Transport()
"""No transport security: unit tests and development only."""
