"""Registry values to and from the wire messages of protos/registry.proto.

Encoding is deterministic: the same value gives the same bytes. Decoding validates everything
(sizes, ids, ranges, enum values) and raises MalformedMessage naming what was wrong; no protobuf
message leaves this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from protos import registry_pb2 as pb
from registry.errors import InvalidRecord, MalformedMessage
from registry.records import (
    AgentRecord,
    AgentState,
    NodeInfo,
    QueueSummary,
    Skills,
    Trust,
    check_id,
)
from registry.sync import Delta, Digest, Reconciliation, StateChunk

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_ENTRIES = 20_000
MAX_BUCKETS = 4096

_TRUST_TO_WIRE = {Trust.INHOUSE: pb.TRUST_INHOUSE, Trust.PARTNER: pb.TRUST_PARTNER}
_TRUST_FROM_WIRE = {wire: trust for trust, wire in _TRUST_TO_WIRE.items()}
_STATE_TO_WIRE = {
    AgentState.OFFLINE: pb.AGENT_STATE_OFFLINE,
    AgentState.AVAILABLE: pb.AGENT_STATE_AVAILABLE,
    AgentState.RESERVED: pb.AGENT_STATE_RESERVED,
    AgentState.TALKING: pb.AGENT_STATE_TALKING,
    AgentState.WRAP_UP: pb.AGENT_STATE_WRAP_UP,
    AgentState.NOT_READY: pb.AGENT_STATE_NOT_READY,
}
_STATE_FROM_WIRE = {wire: state for state, wire in _STATE_TO_WIRE.items()}

M = TypeVar("M", bound=Message)
T = TypeVar("T")


# -- records -----------------------------------------------------------------------------------


def _skills_to_wire(skills: Skills) -> list[pb.Skill]:
    return [pb.Skill(name=name, level=level) for name, level in skills]


def agent_to_wire(record: AgentRecord) -> pb.AgentRecord:
    return pb.AgentRecord(
        agent_id=record.agent_id,
        home_node=record.home_node,
        site=record.site,
        trust=_TRUST_TO_WIRE[record.trust],
        tier=record.tier,
        skills=_skills_to_wire(record.skills),
        state=_STATE_TO_WIRE[record.state],
        reason=record.reason,
        state_since_ms=record.state_since_ms,
        capacity=record.capacity,
        active_calls=record.active_calls,
        epoch=record.epoch,
        clock=record.clock,
    )


def agent_from_wire(message: pb.AgentRecord) -> AgentRecord:
    trust = _TRUST_FROM_WIRE.get(message.trust)
    if trust is None:
        raise InvalidRecord(f"unknown trust value {message.trust}")
    state = _STATE_FROM_WIRE.get(message.state)
    if state is None:
        raise InvalidRecord(f"unknown agent state value {message.state}")
    return AgentRecord(
        agent_id=message.agent_id,
        home_node=message.home_node,
        site=message.site,
        trust=trust,
        tier=message.tier,
        skills=tuple([(s.name, s.level) for s in message.skills]),
        state=state,
        reason=message.reason,
        state_since_ms=message.state_since_ms,
        capacity=message.capacity,
        active_calls=message.active_calls,
        epoch=message.epoch,
        clock=message.clock,
    )


def queue_to_wire(summary: QueueSummary) -> pb.QueueSummary:
    return pb.QueueSummary(
        node=summary.node,
        queue=summary.queue,
        waiting=summary.waiting,
        oldest_since_ms=summary.oldest_since_ms,
        top_priority=summary.top_priority,
        required_skills=_skills_to_wire(summary.required_skills),
        clock=summary.clock,
    )


def queue_from_wire(message: pb.QueueSummary) -> QueueSummary:
    return QueueSummary(
        node=message.node,
        queue=message.queue,
        waiting=message.waiting,
        oldest_since_ms=message.oldest_since_ms,
        top_priority=message.top_priority,
        required_skills=tuple([(s.name, s.level) for s in message.required_skills]),
        clock=message.clock,
    )


def node_to_wire(info: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=info.node_id,
        site=info.site,
        trust=_TRUST_TO_WIRE[info.trust],
        grpc=info.grpc,
        http=info.http,
        gateway=info.gateway,
        up=info.up,
        clock=info.clock,
    )


def node_from_wire(message: pb.NodeInfo) -> NodeInfo:
    trust = _TRUST_FROM_WIRE.get(message.trust)
    if trust is None:
        raise InvalidRecord(f"unknown trust value {message.trust}")
    return NodeInfo(
        node_id=message.node_id,
        site=message.site,
        trust=trust,
        grpc=message.grpc,
        http=message.http,
        gateway=message.gateway,
        up=message.up,
        clock=message.clock,
    )


def _decode_all(what: str, items: Sequence[M], convert: Callable[[M], T]) -> tuple[T, ...]:
    if len(items) > MAX_MESSAGE_ENTRIES:
        raise MalformedMessage(
            f"{what}: {len(items)} entries, more than the limit of {MAX_MESSAGE_ENTRIES}"
        )
    converted = []
    for index, item in enumerate(items):
        try:
            converted.append(convert(item))
        except InvalidRecord as error:
            raise MalformedMessage(f"{what}[{index}]: {error}") from error
    return tuple(converted)


def _check_sender(what: str, sender: str) -> None:
    try:
        check_id(f"{what} sender", sender)
    except InvalidRecord as error:
        raise MalformedMessage(str(error)) from error


# -- sync messages -----------------------------------------------------------------------------


def delta_to_wire(delta: Delta) -> pb.Delta:
    return pb.Delta(
        sender=delta.sender,
        from_seq=delta.from_seq,
        to_seq=delta.to_seq,
        agents=[agent_to_wire(a) for a in delta.agents],
        queues=[queue_to_wire(q) for q in delta.queues],
        nodes=[node_to_wire(n) for n in delta.nodes],
    )


def delta_from_wire(message: pb.Delta) -> Delta:
    _check_sender("delta", message.sender)
    if message.to_seq and message.from_seq > message.to_seq:
        raise MalformedMessage(
            f"delta from {message.sender}: from_seq {message.from_seq} > to_seq {message.to_seq}"
        )
    return Delta(
        sender=message.sender,
        from_seq=message.from_seq,
        to_seq=message.to_seq,
        agents=_decode_all(f"delta from {message.sender}: agents", message.agents, agent_from_wire),
        queues=_decode_all(f"delta from {message.sender}: queues", message.queues, queue_from_wire),
        nodes=_decode_all(f"delta from {message.sender}: nodes", message.nodes, node_from_wire),
    )


def digest_to_wire(digest: Digest) -> pb.Digest:
    return pb.Digest(
        sender=digest.sender,
        seq=digest.seq,
        agent_buckets=digest.agent_buckets,
        queue_buckets=digest.queue_buckets,
        node_buckets=digest.node_buckets,
    )


def digest_from_wire(message: pb.Digest) -> Digest:
    _check_sender("digest", message.sender)
    for name, buckets in (
        ("agent", message.agent_buckets),
        ("queue", message.queue_buckets),
        ("node", message.node_buckets),
    ):
        if len(buckets) > MAX_BUCKETS:
            raise MalformedMessage(
                f"digest from {message.sender}: {len(buckets)} {name} buckets, "
                f"more than {MAX_BUCKETS}"
            )
    return Digest(
        sender=message.sender,
        seq=message.seq,
        agent_buckets=tuple(message.agent_buckets),
        queue_buckets=tuple(message.queue_buckets),
        node_buckets=tuple(message.node_buckets),
    )


def reconciliation_to_wire(reconciliation: Reconciliation) -> pb.Reconciliation:
    return pb.Reconciliation(
        entries=delta_to_wire(reconciliation.entries),
        need_agent_buckets=reconciliation.need_agent_buckets,
        need_queue_buckets=reconciliation.need_queue_buckets,
        need_node_buckets=reconciliation.need_node_buckets,
    )


def reconciliation_from_wire(message: pb.Reconciliation) -> Reconciliation:
    for name, buckets in (
        ("agent", message.need_agent_buckets),
        ("queue", message.need_queue_buckets),
        ("node", message.need_node_buckets),
    ):
        if len(buckets) > MAX_BUCKETS or any(b >= MAX_BUCKETS for b in buckets):
            raise MalformedMessage(f"reconciliation: {name} bucket numbers out of range")
    return Reconciliation(
        entries=delta_from_wire(message.entries),
        need_agent_buckets=tuple(message.need_agent_buckets),
        need_queue_buckets=tuple(message.need_queue_buckets),
        need_node_buckets=tuple(message.need_node_buckets),
    )


def chunk_to_wire(chunk: StateChunk) -> pb.StateChunk:
    return pb.StateChunk(
        sender=chunk.sender,
        seq=chunk.seq,
        index=chunk.index,
        count=chunk.count,
        agents=[agent_to_wire(a) for a in chunk.agents],
        queues=[queue_to_wire(q) for q in chunk.queues],
        nodes=[node_to_wire(n) for n in chunk.nodes],
    )


def chunk_from_wire(message: pb.StateChunk) -> StateChunk:
    _check_sender("state chunk", message.sender)
    if message.index >= message.count:
        raise MalformedMessage(
            f"state chunk from {message.sender}: index {message.index} not below "
            f"count {message.count}"
        )
    what = f"state chunk {message.index} from {message.sender}"
    return StateChunk(
        sender=message.sender,
        seq=message.seq,
        index=message.index,
        count=message.count,
        agents=_decode_all(f"{what}: agents", message.agents, agent_from_wire),
        queues=_decode_all(f"{what}: queues", message.queues, queue_from_wire),
        nodes=_decode_all(f"{what}: nodes", message.nodes, node_from_wire),
    )


# -- bytes -------------------------------------------------------------------------------------


def to_bytes(message: Message) -> bytes:
    """Deterministic serialization."""
    return message.SerializeToString(deterministic=True)


def parse(message_type: type[M], data: bytes) -> M:
    """Parse wire bytes, refusing oversized or undecodable input with MalformedMessage."""
    name = message_type.DESCRIPTOR.name
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(
            f"{name}: {len(data)} bytes, more than the limit of {MAX_MESSAGE_BYTES}"
        )
    try:
        return message_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise MalformedMessage(f"{name}: undecodable bytes ({error})") from error


def encode_delta(delta: Delta) -> bytes:
    return to_bytes(delta_to_wire(delta))


def decode_delta(data: bytes) -> Delta:
    return delta_from_wire(parse(pb.Delta, data))


def encode_digest(digest: Digest) -> bytes:
    return to_bytes(digest_to_wire(digest))


def decode_digest(data: bytes) -> Digest:
    return digest_from_wire(parse(pb.Digest, data))


def encode_chunk(chunk: StateChunk) -> bytes:
    return to_bytes(chunk_to_wire(chunk))


def decode_chunk(data: bytes) -> StateChunk:
    return chunk_from_wire(parse(pb.StateChunk, data))
