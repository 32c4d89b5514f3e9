"""The call exchange over gRPC: the Calls service, and a Link that reaches any node's desk or
owner side (directly when the node is this one, by its gossiped gRPC address otherwise)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from node import metrics, peerpolicy
from node.ca import Identity
from node.exchange import (
    AgentAction,
    CallInfo,
    Desk,
    Owner,
    ReleaseReason,
    Reservation,
    Verdict,
)
from node.transport import PLAIN, Transport
from protos import calls_pb2 as pb
from protos import calls_pb2_grpc as pb_grpc
from registry.errors import InvalidRecord
from registry.records import Trust, check_id
from registry.registry import Registry

log = logging.getLogger(__name__)

_RELEASE_TO_WIRE = {
    ReleaseReason.CANCELLED: pb.RELEASE_REASON_CANCELLED,
    ReleaseReason.MISSED: pb.RELEASE_REASON_MISSED,
    ReleaseReason.ENDED: pb.RELEASE_REASON_ENDED,
}
_RELEASE_FROM_WIRE = {wire: reason for reason, wire in _RELEASE_TO_WIRE.items()}
_ACTION_TO_WIRE = {
    AgentAction.ANSWER: pb.AGENT_ACTION_ANSWER,
    AgentAction.REJECT: pb.AGENT_ACTION_REJECT,
    AgentAction.HANGUP: pb.AGENT_ACTION_HANGUP,
    AgentAction.CHECK: pb.AGENT_ACTION_CHECK,
    AgentAction.ESCALATE: pb.AGENT_ACTION_ESCALATE,
    AgentAction.CONSULT: pb.AGENT_ACTION_CONSULT,
    AgentAction.HANDOVER: pb.AGENT_ACTION_HANDOVER,
    AgentAction.DIGITS: pb.AGENT_ACTION_DIGITS,
    AgentAction.DISPOSITION: pb.AGENT_ACTION_DISPOSITION,
}
_ACTION_FROM_WIRE = {wire: action for action, wire in _ACTION_TO_WIRE.items()}
MAX_TEXT = 4096


def _call_to_wire(call: CallInfo) -> pb.CallInfo:
    return pb.CallInfo(
        call_id=call.call_id,
        owner_node=call.owner_node,
        queue=call.queue,
        caller=call.caller,
        arrived_ms=call.arrived_ms,
        notes=call.notes,
        customer=dict(call.customer),
    )


def _is_id(value: str) -> bool:
    try:
        check_id("id", value)
    except InvalidRecord:
        return False
    return True


def _call_from_wire(message: pb.CallInfo) -> CallInfo:
    for name in ("call_id", "owner_node", "queue"):
        check_id(name, getattr(message, name))
    if len(message.caller) > 256 or len(message.notes) > MAX_TEXT:
        raise InvalidRecord("caller or notes too long")
    if len(message.customer) > 200 or any(
        len(k) > 64 or len(v) > 1024 for k, v in message.customer.items()
    ):
        raise InvalidRecord("customer record too large")
    return CallInfo(
        message.call_id,
        message.owner_node,
        message.queue,
        message.caller,
        message.arrived_ms,
        message.notes,
        dict(message.customer),
    )


@dataclass(frozen=True, slots=True)
class PeerRules:
    """What the servicer needs to check a peer (node/peerpolicy.py): how to learn who it is,
    this node's site, the partner scopes, the registry."""

    transport: Transport
    site: str
    scopes: frozenset[tuple[str, str]]
    view: peerpolicy.RegistryView
    offer_owner: Callable[[str, str], str | None] = lambda call_id, agent_id: None
    """(call id, agent id) -> the node that owns the call the agent is offered, if any."""


class CallsServicer(pb_grpc.CallsServicer):
    """Delegates to this node's desk and switchboard (None until the node has built them).
    With `rules`, a partner peer's calls are checked against node/peerpolicy.py first."""

    def __init__(
        self,
        desk: Callable[[], Desk | None],
        owner: Callable[[], Owner | None],
        rules: PeerRules | None = None,
        met: Callable[[str], None] = lambda node_id: None,
    ) -> None:
        """`met(node_id)`: a call's owner node asked for a reservation (so that a node whose
        registry does not know it yet can learn its address before the agent answers)."""
        self._desk = desk
        self._owner = owner
        self._rules = rules
        self._met = met

    def _peer(self, context: grpc.aio.ServicerContext) -> Identity | None:
        return self._rules.transport.peer(context) if self._rules is not None else None

    async def _refuse(self, context: grpc.aio.ServicerContext, reason: str | None) -> None:
        if reason is not None:
            log.warning("call exchange refused: %s", reason)
            metrics.registry_refused("peer", "partner_scope")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    async def _need_desk(self, context: grpc.aio.ServicerContext) -> Desk:
        desk = self._desk()
        if desk is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node starting")
        assert desk is not None
        return desk

    async def _need_owner(self, context: grpc.aio.ServicerContext) -> Owner:
        owner = self._owner()
        if owner is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node starting")
        assert owner is not None
        return owner

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveReply:
        desk = await self._need_desk(context)
        try:
            call = _call_from_wire(request.call)
            check_id("agent_id", request.agent_id)
        except InvalidRecord as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        if self._rules is not None:
            peer, rules = self._peer(context), self._rules
            await self._refuse(
                context,
                peerpolicy.may_reserve(peer, call.owner_node, rules.site, rules.scopes, rules.view),
            )
        self._met(call.owner_node)
        result = await desk.reserve(
            call, request.agent_id, request.ring_timeout_ms / 1000, request.wrap_up_ms / 1000
        )
        return pb.ReserveReply(reserved=result.reserved, reason=result.reason, epoch=result.epoch)

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        desk = await self._need_desk(context)
        reason = _RELEASE_FROM_WIRE.get(request.reason)
        if reason is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown release reason")
            raise AssertionError
        if self._rules is not None:
            owner = self._rules.offer_owner(request.call_id, request.agent_id)
            if owner is not None:  # no such offer: releasing it changes nothing
                peer = self._peer(context)
                await self._refuse(context, peerpolicy.may_release(peer, owner, self._rules.view))
        await desk.release(request.call_id, request.agent_id, reason)
        return pb.Empty()

    async def Report(
        self, request: pb.AgentEvent, context: grpc.aio.ServicerContext
    ) -> pb.AgentEventReply:
        owner = await self._need_owner(context)
        action = _ACTION_FROM_WIRE.get(request.action)
        if action is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown agent action")
            raise AssertionError
        if len(request.notes) > MAX_TEXT or (request.queue and not _is_id(request.queue)):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad escalation queue or notes")
        if self._rules is not None:
            peer = self._peer(context)
            await self._refuse(
                context, peerpolicy.may_speak_for(peer, request.agent_id, self._rules.view)
            )
        verdict = await owner.report(
            request.call_id,
            request.agent_id,
            action,
            request.epoch,
            queue=request.queue,
            notes=request.notes,
        )
        return pb.AgentEventReply(accepted=verdict.accepted, reason=verdict.reason)

    async def Holds(
        self, request: pb.HoldsRequest, context: grpc.aio.ServicerContext
    ) -> pb.HoldsReply:
        desk = await self._need_desk(context)
        if not (_is_id(request.call_id) and _is_id(request.agent_id)):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad call or agent id")
        if self._rules is not None:
            owner = self._rules.offer_owner(request.call_id, request.agent_id)
            peer = self._peer(context)
            await self._refuse(context, peerpolicy.may_ask_holds(peer, owner, self._rules.view))
        try:
            verdict = await desk.holds(request.call_id, request.agent_id, request.epoch)
        except ConnectionError as error:  # this node cannot tell now (its lease is in doubt)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise
        return pb.HoldsReply(held=verdict.accepted, reason=verdict.reason)

    async def Pull(
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext
    ) -> pb.PullReply:
        owner = await self._need_owner(context)
        if self._rules is not None:
            peer = self._peer(context)
            await self._refuse(
                context,
                peerpolicy.may_pull(peer, request.agent_id, request.home_node, self._rules.view),
            )
        offered = await owner.pull(request.agent_id, request.home_node, request.queue)
        return pb.PullReply(offered=offered)


class _RemoteDesk:
    def __init__(
        self,
        stub: pb_grpc.CallsStub,
        timeout_s: float,
        pinned: Callable[[str], pb_grpc.CallsStub | None] | None = None,
    ) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._pinned = pinned  # agent id -> the stub its offer may travel on (see NodeLink)

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        stub = self._pinned(agent_id) if self._pinned is not None else self._stub
        if stub is None:
            raise ConnectionError("the agent's home node is not known")
        try:
            reply = await stub.Reserve(
                pb.ReserveRequest(
                    call=_call_to_wire(call),
                    agent_id=agent_id,
                    ring_timeout_ms=round(ring_timeout_s * 1000),
                    wrap_up_ms=round(wrap_up_s * 1000),
                ),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None
        return Reservation(reply.reserved, reply.reason, reply.epoch)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        try:
            await self._stub.Release(
                pb.ReleaseRequest(
                    call_id=call_id, agent_id=agent_id, reason=_RELEASE_TO_WIRE[reason]
                ),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        try:
            reply = await self._stub.Holds(
                pb.HoldsRequest(call_id=call_id, agent_id=agent_id, epoch=epoch),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                # a home of a release before Holds (a rolling upgrade) answers, so it is alive;
                # its own watchdog still frees the agent when this owner lets the call go
                return Verdict(True, "the home cannot tell: it predates Holds")
            raise ConnectionError(f"{error.code().name}: {error.details()}") from None
        return Verdict(reply.held, reply.reason)


class _RemoteOwner:
    def __init__(self, stub: pb_grpc.CallsStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict:
        try:
            reply = await self._stub.Report(
                pb.AgentEvent(
                    call_id=call_id,
                    agent_id=agent_id,
                    action=_ACTION_TO_WIRE[action],
                    epoch=epoch,
                    queue=queue,
                    notes=notes,
                ),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            return Verdict(False, f"owner unreachable: {error.code().name}")
        return Verdict(reply.accepted, reply.reason)

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        try:
            reply = await self._stub.Pull(
                pb.PullRequest(agent_id=agent_id, home_node=home_node, queue=queue),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.offered)


class _Unreachable:
    """A node whose address is not known (yet): every call fails at once."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        raise ConnectionError(f"no address known for node {self._node_id}")

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        raise ConnectionError(f"no address known for node {self._node_id}")

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        raise ConnectionError(f"no address known for node {self._node_id}")

    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict:
        return Verdict(False, f"no address known for node {self._node_id}")

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        return False


class NodeLink:
    """Desks and owners by node id: this node's own objects, or gRPC stubs by gossiped address."""

    def __init__(self, registry: Registry, timeout_s: float, transport: Transport = PLAIN) -> None:
        self._registry = registry
        self._transport = transport
        self._timeout_s = timeout_s
        self._channels: dict[tuple[str, Trust | None], grpc.aio.Channel] = {}
        self.local_desk: Desk | None = None
        self.local_owner: Owner | None = None
        self.blocked: frozenset[str] = frozenset()  # fault injection: addresses cut off

    def _stub(self, node_id: str, expect: Trust | None = None) -> pb_grpc.CallsStub | None:
        """A stub on a channel to the node (with TLS: to a certificate of trust `expect`)."""
        info = self._registry.node(node_id)
        if info is None or not info.up or info.grpc in self.blocked:
            return None
        channel = self._channels.get((info.grpc, expect))
        if channel is None:
            channel = self._transport.channel(info.grpc, expect)
            self._channels[(info.grpc, expect)] = channel
        return pb_grpc.CallsStub(channel)

    def _offer_stub(self, node_id: str, agent_id: str) -> pb_grpc.CallsStub | None:
        """An offer carries the customer record cut to the agent's trust as the registry says
        it: one cut for in-house eyes goes only to a node whose certificate says in-house, so a
        partner claiming in-house agents never receives in-house fields (I5)."""
        record = self._registry.agent(agent_id)
        partner = record is not None and record.trust is Trust.PARTNER
        return self._stub(node_id, None if partner else Trust.INHOUSE)

    def desk(self, node_id: str) -> Desk:
        if node_id == self._registry.node_id and self.local_desk is not None:
            return self.local_desk
        stub = self._stub(node_id)
        if stub is None:
            return _Unreachable(node_id)
        return _RemoteDesk(stub, self._timeout_s, lambda agent: self._offer_stub(node_id, agent))

    def owner(self, node_id: str) -> Owner:
        if node_id == self._registry.node_id and self.local_owner is not None:
            return self.local_owner
        stub = self._stub(node_id)
        return _Unreachable(node_id) if stub is None else _RemoteOwner(stub, self._timeout_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
