"""The Revocations gRPC service (protos/revocations.proto): token revocations pushed from one
site to another over the nodes' mutual-TLS channel, and the link that pushes them. Protobuf
messages stop here.

A push is checked by node/revoker.py `unsealed`: it must name the site of the pushing node's
certificate, carry that site's signature, and, from a partner site, revoke only that site's own
users' tokens; otherwise the whole push is refused (PERMISSION_DENIED, UNAUTHENTICATED or
INVALID_ARGUMENT, with the reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from node.auth import Auth
from node.etcd import EtcdRefused, EtcdUnavailable
from node.revocations import Revocation
from node.revoker import unsealed
from node.tokens import AuthError, OutOfScope
from node.transport import PLAIN, Transport
from protos import revocations_pb2 as pb
from protos import revocations_pb2_grpc as pb_grpc
from registry.errors import InvalidRecord

log = logging.getLogger(__name__)

MAX_CHANNELS = 64
"""Channels kept open to other sites' nodes; the oldest is closed past this (nodes come and go)."""


class Receiver(Protocol):
    """What takes a checked push in: node/revoker.py's Revoker."""

    auth: Auth

    async def received(self, entries: list[Revocation]) -> int:
        """Merge and store the entries; how many were new."""


class RevocationServicer(pb_grpc.RevocationsServicer):
    """Takes other sites' pushes into this node's Revoker (None until the node has built it;
    None for good when authentication is off: `enabled` False)."""

    def __init__(
        self, revoker: Callable[[], Receiver | None], enabled: bool, transport: Transport = PLAIN
    ) -> None:
        self._revoker = revoker
        self._enabled = enabled
        self._transport = transport

    async def Push(
        self, request: pb.RevocationPush, context: grpc.aio.ServicerContext
    ) -> pb.RevocationPushReply:
        revoker = self._revoker()
        if revoker is None:
            if self._enabled:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node starting")
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "authentication is off on this node (no users_file): it keeps no revocations",
            )
        assert revoker is not None
        body = {"site": request.site, "revocations": request.revocations}
        body["signature"] = request.signature
        try:
            entries = unsealed(revoker.auth, body, self._transport.peer(context))
        except InvalidRecord as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        except OutOfScope as error:
            log.warning("revocation push from site %.64s refused: %s", request.site, error)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
            raise
        except AuthError as error:
            log.warning("revocation push from site %.64s refused: %s", request.site, error)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise
        try:
            added = await revoker.received(entries)
        except (EtcdUnavailable, EtcdRefused) as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"site etcd: {error}")
            raise
        return pb.RevocationPushReply(received=len(entries), added=added)


class RevocationLink:
    """Pushes to other sites' nodes by their gRPC address (node/revoker.py's Pusher)."""

    def __init__(self, transport: Transport, timeout_s: float) -> None:
        self._transport = transport
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def push(self, address: str, body: dict[str, Any]) -> None:
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                oldest = next(iter(self._channels))
                await self._channels.pop(oldest).close()
            channel = self._channels[address] = self._transport.channel(address)
        push = pb.RevocationPush(
            site=body["site"], revocations=body["revocations"], signature=body["signature"]
        )
        try:
            await pb_grpc.RevocationsStub(channel).Push(push, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
