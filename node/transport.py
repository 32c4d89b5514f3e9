"""How a node reaches other nodes over gRPC, and how it serves them: the one place channels and
listening ports are made, so transport security and test-only link conditions live here.

With `tls` set, every server demands a client certificate from the cluster's CA (mutual TLS: a
peer without one cannot connect at all) and every channel presents this node's certificate and
checks the server's against a pinned name (node/ca.py `pin_name`): any node, or only in-house
nodes. `peer(context)` is the verified identity (node, site, trust) of a server-side call's
caller, from its certificate; node/peerpolicy.py decides what that peer may do.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from node.ca import CaError, Identity, identity_of, pin_name
from node.wan import WanDelay
from registry.records import Trust

log = logging.getLogger(__name__)

MAX_GRPC_MESSAGE = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
]
UNKNOWN_PEER = Identity("?", "?", Trust.PARTNER)
"""A TLS peer whose certificate names no node (never issued by `callmesh ca`): least trusted."""


@dataclass(frozen=True, slots=True)
class Tls:
    """This node's PEM material: the CA that signs every node, its certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, ca: str | Path, cert: str | Path, key: str | Path) -> Tls:
        tls = cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())
        tls.identity()  # a certificate that names no node fails at start, not at first call
        return tls

    def identity(self) -> Identity:
        return identity_of(self.cert)


@dataclass(frozen=True, slots=True)
class Transport:
    """Channel and port factory for node-to-node gRPC (gossip and the call exchange)."""

    wan: WanDelay | None = None
    """Test-only: a delay on the channels to other sites' nodes (node/wan.py)."""
    tls: Tls | None = None
    """Mutual TLS; None: plain gRPC (unit tests and development only)."""

    def channel(self, address: str, expect: Trust | None = None) -> grpc.aio.Channel:
        """A channel to another node's gRPC address (host:port). With TLS, the handshake fails
        unless the server's certificate is of trust `expect` (None: any node of the cluster)."""
        interceptors = self.wan.interceptors(address) if self.wan is not None else []
        if self.tls is None:
            return grpc.aio.insecure_channel(
                address, options=GRPC_OPTIONS, interceptors=interceptors or None
            )
        credentials = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)
        options = [*GRPC_OPTIONS, ("grpc.ssl_target_name_override", pin_name(expect))]
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors or None
        )

    def peer_channel(self, address: str) -> grpc.aio.Channel:
        """A gossip channel: an in-house node reads registry entries only from in-house nodes
        (partner nodes push theirs, checked by node/peerpolicy.py); a partner reads from any."""
        own = self.tls.identity().trust if self.tls is not None else Trust.PARTNER
        return self.channel(address, Trust.INHOUSE if own is Trust.INHOUSE else None)

    def server(self) -> grpc.aio.Server:
        return grpc.aio.server(options=GRPC_OPTIONS)

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on host:port; returns the bound port, 0 when it could not bind."""
        if self.tls is None:
            port: int = server.add_insecure_port(address)
            return port
        credentials = grpc.ssl_server_credentials(
            [(self.tls.key, self.tls.cert)], root_certificates=self.tls.ca, require_client_auth=True
        )
        secure: int = server.add_secure_port(address, credentials)
        return secure

    def peer(self, context: grpc.aio.ServicerContext) -> Identity | None:
        """Who is calling, from its verified certificate; None without TLS (no identities)."""
        if self.tls is None:
            return None
        pems = context.auth_context().get("x509_pem_cert") or []
        return _identity(bytes(pems[0])) if pems else UNKNOWN_PEER


@functools.lru_cache(maxsize=256)
def _identity(pem: bytes) -> Identity:
    try:
        return identity_of(pem)
    except CaError as error:
        log.warning("peer certificate names no node: %s", error)
        return UNKNOWN_PEER


PLAIN = Transport()
"""No transport security: unit tests and development only."""
