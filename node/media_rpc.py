"""The Media gRPC service (node-to-node legs, protos/calls.proto) and the link that calls it on
other nodes. Protobuf messages stop here.

With `PeerRules` (node/calls_rpc.py), a partner peer may open or close a leg only for a call its
site's nodes own and that the agent is offered here (node/peerpolicy.py `may_relay`), as for
releases in the call exchange, and the relay address it names must be its own (the IP its
connection comes from, or its node's gossiped gRPC host: `may_send_media_to`), so that it cannot
have a call's RTP sent to a third host; otherwise PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol
from urllib.parse import unquote

import grpc

from node import metrics, peerpolicy
from node.calls_rpc import PeerRules
from node.transport import PLAIN, Transport
from protos import calls_pb2 as pb
from protos import calls_pb2_grpc as pb_grpc
from registry.errors import InvalidRecord
from registry.records import check_id
from registry.registry import Registry

log = logging.getLogger(__name__)

_ADDRESS_MAX = 64


class NoMedia(Exception):
    """The agent has no media session on its home node (or no offer of that call)."""

    code = "no_media"


class HomeMedia(Protocol):
    """An agent's home node, as a call's owner needs it for media."""

    async def open_leg(self, call_id: str, agent_id: str, owner_address: str) -> str: ...

    async def close_leg(self, call_id: str, agent_id: str) -> None: ...


def peer_host(context: grpc.aio.ServicerContext) -> str | None:
    """The IP address a server-side call comes from ("ipv4:H:P", "ipv6:%5BH%5D:P"), or None."""
    kind, _, rest = unquote(context.peer() or "").partition(":")
    if kind not in ("ipv4", "ipv6") or ":" not in rest:
        return None
    return rest.rpartition(":")[0].strip("[]")


class MediaServicer(pb_grpc.MediaServicer):
    def __init__(
        self, plane: Callable[[], HomeMedia | None], rules: PeerRules | None = None
    ) -> None:
        self._plane = plane
        self._rules = rules

    def _refusal(
        self,
        context: grpc.aio.ServicerContext,
        call_id: str,
        agent_id: str,
        address: str | None = None,
    ) -> str | None:
        """Why this peer may not touch the leg of (call, agent) here, nor have its RTP sent to
        `address` (an Open), or None."""
        if self._rules is None:
            return None
        peer = self._rules.transport.peer(context)
        owner = self._rules.offer_owner(call_id, agent_id)
        refused = peerpolicy.may_relay(peer, owner, self._rules.view)
        if refused is None and address is not None:
            host = peer_host(context)
            refused = peerpolicy.may_send_media_to(peer, address, host, self._rules.view)
        return refused

    async def _refuse(self, context: grpc.aio.ServicerContext, reason: str) -> None:
        log.warning("media leg refused: %s", reason)
        metrics.registry_refused("peer", "partner_scope")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    async def _need(self, context: grpc.aio.ServicerContext) -> HomeMedia:
        plane = self._plane()
        if plane is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node starting")
        assert plane is not None
        return plane

    async def Open(
        self, request: pb.MediaOpenRequest, context: grpc.aio.ServicerContext
    ) -> pb.MediaOpenReply:
        plane = await self._need(context)
        try:
            check_id("call_id", request.call_id)
            check_id("agent_id", request.agent_id)
            if not 0 < len(request.address) <= _ADDRESS_MAX or ":" not in request.address:
                raise InvalidRecord("address must be host:port")
        except InvalidRecord as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        refused = self._refusal(context, request.call_id, request.agent_id, request.address)
        if refused is not None:
            await self._refuse(context, refused)
        try:
            address = await plane.open_leg(request.call_id, request.agent_id, request.address)
        except NoMedia as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise
        return pb.MediaOpenReply(address=address)

    async def Close(
        self, request: pb.MediaCloseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        plane = await self._need(context)
        refused = self._refusal(context, request.call_id, request.agent_id)
        if refused is not None:
            assert self._rules is not None
            if self._rules.offer_owner(request.call_id, request.agent_id) is None:
                return pb.Empty()  # no such offer here (released already): nothing to close
            await self._refuse(context, refused)
        await plane.close_leg(request.call_id, request.agent_id)
        return pb.Empty()


class MediaLink:
    """Reach the Media service of any node by id (its gossiped gRPC address), or this node's
    own plane directly."""

    def __init__(self, registry: Registry, timeout_s: float, transport: Transport = PLAIN) -> None:
        self._registry = registry
        self._timeout_s = timeout_s
        self._transport = transport
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, node_id: str) -> pb_grpc.MediaStub:
        info = self._registry.node(node_id)
        if info is None or not info.up:
            raise ConnectionError(f"no address known for node {node_id}")
        channel = self._channels.get(info.grpc)
        if channel is None:
            channel = self._channels[info.grpc] = self._transport.channel(info.grpc)
        return pb_grpc.MediaStub(channel)

    async def open_leg(self, node_id: str, call_id: str, agent_id: str, address: str) -> str:
        """Ask `node_id` to bridge its agent's leg to RTP at `address`; its own address."""
        try:
            reply = await self._stub(node_id).Open(
                pb.MediaOpenRequest(call_id=call_id, agent_id=agent_id, address=address),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise NoMedia(str(error.details())) from None
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None
        return str(reply.address)

    async def close_leg(self, node_id: str, call_id: str, agent_id: str) -> None:
        try:
            await self._stub(node_id).Close(
                pb.MediaCloseRequest(call_id=call_id, agent_id=agent_id), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
