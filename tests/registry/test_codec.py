"""Encoding to the wire and back: round trips, determinism, and hostile bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import registry_pb2 as pb
from registry import codec
from registry.errors import MalformedMessage
from registry.records import AgentRecord, AgentState, QueueSummary, Trust
from registry.sync import Delta, Digest, Reconciliation, StateChunk
from tests.registry.strategies import agent_records, ids, node_infos, queue_summaries

deltas = st.builds(
    Delta,
    sender=ids,
    from_seq=st.integers(0, 100),
    to_seq=st.integers(100, 2**63),
    agents=st.lists(agent_records(agent_ids=ids, homes=ids), max_size=5).map(tuple),
    queues=st.lists(queue_summaries(), max_size=3).map(tuple),
    nodes=st.lists(node_infos(), max_size=2).map(tuple),
)


@given(deltas)
def test_delta_round_trips_and_encodes_deterministically(delta: Delta) -> None:
    data = codec.encode_delta(delta)
    assert codec.decode_delta(data) == delta
    assert codec.encode_delta(codec.decode_delta(data)) == data


@given(ids, st.integers(0, 2**64 - 1), st.lists(st.integers(0, 2**64 - 1), max_size=64))
def test_digest_round_trips(sender: str, seq: int, buckets: list[int]) -> None:
    digest = Digest(sender, seq, tuple(buckets), tuple(reversed(buckets)), tuple(buckets[:3]))
    assert codec.decode_digest(codec.encode_digest(digest)) == digest


@given(deltas, st.lists(st.integers(0, 127), max_size=5))
def test_reconciliation_and_chunk_round_trip(delta: Delta, buckets: list[int]) -> None:
    loose = Delta(delta.sender, 0, 0, delta.agents, delta.queues, delta.nodes)
    answer = Reconciliation(loose, tuple(buckets), (), tuple(buckets[:2]))
    wire = codec.reconciliation_to_wire(answer)
    assert codec.reconciliation_from_wire(wire) == answer
    chunk = StateChunk(delta.sender, 7, 1, 2, delta.agents, delta.queues, delta.nodes)
    assert codec.decode_chunk(codec.encode_chunk(chunk)) == chunk


def one_agent_delta(**fields: object) -> bytes:
    record = pb.AgentRecord(
        agent_id="a1",
        home_node="n1",
        site="site-a",
        trust=pb.TRUST_INHOUSE,
        tier=1,
        state=pb.AGENT_STATE_AVAILABLE,
        capacity=1,
    )
    for name, value in fields.items():
        if name == "skills":
            record.skills.extend(value)  # type: ignore[arg-type]
        else:
            setattr(record, name, value)
    return pb.Delta(sender="n1", from_seq=0, to_seq=1, agents=[record]).SerializeToString()


def test_a_valid_hand_built_delta_decodes() -> None:
    delta = codec.decode_delta(one_agent_delta())
    assert delta.agents[0] == AgentRecord(
        "a1", "n1", "site-a", Trust.INHOUSE, 1, (), AgentState.AVAILABLE
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"trust": 7}, "unknown trust value 7"),
        ({"state": 42}, "unknown agent state value 42"),
        ({"state": pb.AGENT_STATE_UNSPECIFIED}, "unknown agent state value 0"),
        ({"agent_id": ""}, "agent_id must be"),
        ({"agent_id": "x" * 65}, "agent_id must be"),
        ({"home_node": "n1; rm -rf /"}, "home_node must be"),
        ({"tier": 0}, "tier must be an integer in 1-9"),
        ({"capacity": 0}, "capacity must be"),
        ({"active_calls": 2}, "active_calls must be an integer in 0-1"),
        ({"reason": "lunch"}, "only a not-ready agent has a reason"),
        ({"state": pb.AGENT_STATE_NOT_READY}, "needs a reason"),
        ({"state_since_ms": 2**60}, "state_since_ms"),
        ({"skills": [pb.Skill(name="sales", level=11)]}, "level must be an integer in 1-10"),
        ({"skills": [pb.Skill(name="b", level=1), pb.Skill(name="a", level=1)]}, "sorted"),
        ({"skills": [pb.Skill(name="a", level=1)] * 2}, "no repeats"),
        ({"skills": [pb.Skill(name=f"s{i:02d}", level=1) for i in range(33)]}, "at most 32"),
    ],
)
def test_hostile_records_are_refused_with_a_clear_error(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(MalformedMessage, match=r"delta from n1: agents\[0\]: .*" + message):
        codec.decode_delta(one_agent_delta(**fields))


def test_oversized_bytes_are_refused_before_parsing() -> None:
    with pytest.raises(MalformedMessage, match="more than the limit"):
        codec.decode_delta(b"\0" * (codec.MAX_MESSAGE_BYTES + 1))


def test_too_many_entries_are_refused() -> None:
    record = pb.AgentRecord(agent_id="a")
    data = pb.Delta(sender="n1", agents=[record] * (codec.MAX_MESSAGE_ENTRIES + 1))
    with pytest.raises(MalformedMessage, match="20001 entries"):
        codec.delta_from_wire(data)


def test_backwards_range_and_bad_sender_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="from_seq 5 > to_seq 2"):
        codec.delta_from_wire(pb.Delta(sender="n1", from_seq=5, to_seq=2))
    with pytest.raises(MalformedMessage, match="sender"):
        codec.delta_from_wire(pb.Delta(sender=""))
    with pytest.raises(MalformedMessage, match="index 3 not below count 3"):
        codec.chunk_from_wire(pb.StateChunk(sender="n1", index=3, count=3))
    with pytest.raises(MalformedMessage, match="buckets"):
        codec.digest_from_wire(pb.Digest(sender="n1", agent_buckets=[0] * 5000))


def test_unknown_fields_are_ignored() -> None:
    # field 99 (varint 1) appended: a newer peer's addition must not break an older node
    data = one_agent_delta() + b"\x98\x06\x01"
    assert len(codec.decode_delta(data).agents) == 1


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    for decode in (codec.decode_delta, codec.decode_digest, codec.decode_chunk):
        with contextlib.suppress(MalformedMessage):
            decode(data)


@given(st.data())
def test_mutated_valid_bytes_decode_or_fail_cleanly(data: st.DataObject) -> None:
    valid = bytearray(one_agent_delta(skills=[pb.Skill(name="sales", level=3)]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(valid) - 1))
        valid[position] = data.draw(st.integers(0, 255))
    try:
        delta = codec.decode_delta(bytes(valid))
    except MalformedMessage:
        return
    for record in delta.agents:  # whatever decodes is a valid record again
        assert codec.agent_from_wire(codec.agent_to_wire(record)) == record


def test_one_agent_delta_is_small() -> None:
    record = AgentRecord(
        "agent-12345",
        "site-a-n1",
        "site-a",
        Trust.INHOUSE,
        1,
        (("billing", 5), ("english", 9), ("sales", 3)),
        AgentState.AVAILABLE,
        state_since_ms=1_800_000_000_000,
        epoch=3,
        clock=(1_800_000_000_000 << 16) | 5,
    )
    size = len(codec.encode_delta(Delta("site-a-n1", 10, 11, (record,))))
    assert size <= 128, size


def test_queue_summary_round_trip() -> None:
    summary = QueueSummary("n1", "sales", 3, 1_000, -2, (("sales", 2),), clock=9)
    assert codec.queue_from_wire(codec.queue_to_wire(summary)) == summary


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grpc": "no-port"}, "grpc must be host:port"),
        ({"http": "host:99999"}, "http must be host:port"),
        ({"http": "a b:80"}, "http must be host:port"),
        ({"trust": 9}, "unknown trust value 9"),
        ({"node_id": ""}, "node_id must be"),
    ],
)
def test_hostile_node_info_is_refused(fields: dict[str, object], message: str) -> None:
    info = pb.NodeInfo(
        node_id="n1", site="s", trust=pb.TRUST_PARTNER, grpc="127.0.0.1:1", http="[::1]:2"
    )
    for name, value in fields.items():
        setattr(info, name, value)
    data = pb.Delta(sender="n1", nodes=[info]).SerializeToString()
    with pytest.raises(MalformedMessage, match=r"nodes\[0\]: " + message):
        codec.decode_delta(data)
