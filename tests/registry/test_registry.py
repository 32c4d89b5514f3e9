"""The registry's laws and rules: merge is a join, sync converges, only home nodes write."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.clock import HybridClock, pack
from registry.errors import ClockSkew, ForeignWrite, MalformedMessage, StaleEpoch
from registry.records import AgentRecord, AgentState, NodeInfo, QueueSummary, Trust
from registry.registry import MAX_DELTA_ENTRIES, Registry
from registry.sync import Delta, Digest
from tests.registry.strategies import NODES, agent_records, node_infos, queue_summaries

NOW_MS = 1 << 41  # after every clock the strategies draw


def fixed_clock() -> HybridClock:
    return HybridClock(lambda: NOW_MS)


def replica(node: str = "n0") -> Registry:
    return Registry(node, fixed_clock())


Batch = tuple[list[AgentRecord], list[QueueSummary], list[NodeInfo]]
batches = st.tuples(
    st.lists(agent_records(), max_size=8),
    st.lists(queue_summaries(), max_size=4),
    st.lists(node_infos(), max_size=3),
)


def merged(*parts: Batch) -> Registry:
    registry = replica()
    for agents, queues, nodes in parts:
        registry.apply(agents, queues, "peer", nodes)
    return registry


def joined(*parts: Batch) -> Batch:
    return (
        [a for p in parts for a in p[0]],
        [q for p in parts for q in p[1]],
        [n for p in parts for n in p[2]],
    )


@given(batches, batches)
def test_merge_is_commutative(a: Batch, b: Batch) -> None:
    assert merged(a, b).snapshot() == merged(b, a).snapshot()


@given(batches, batches, batches)
def test_merge_is_associative(a: Batch, b: Batch, c: Batch) -> None:
    ab_c = merged(joined(a, b), c)
    a_bc = merged(a, joined(b, c))
    assert ab_c.snapshot() == a_bc.snapshot()


@given(batches)
def test_merge_is_idempotent(a: Batch) -> None:
    once = merged(a)
    twice = merged(a, a)
    assert once.snapshot() == twice.snapshot()
    assert twice.seq == once.seq  # the second merge changed nothing


@given(agent_records(), st.integers(1, 5))
def test_higher_epoch_beats_later_clock(record: AgentRecord, extra: int) -> None:
    newer_session = replace(record, epoch=record.epoch + extra, clock=0, home_node="n2")
    later_clock = replace(record, clock=record.clock + 1_000_000)
    for order in ([newer_session, later_clock], [later_clock, newer_session]):
        registry = merged((order, [], []))
        assert registry.agent(record.agent_id) == newer_session


def test_version_tie_between_different_records_is_broken_deterministically() -> None:
    base = AgentRecord("a1", "n1", "site-a", Trust.INHOUSE, 1, (), AgentState.AVAILABLE, clock=5)
    other = replace(base, tier=2)
    assert merged(([base, other], [], [])).snapshot() == merged(([other, base], [], [])).snapshot()


# -- sync: any order, duplication or loss of deltas, then one digest round, converges ----------

Op = tuple[str, int, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "queue", "deliver"]),
        st.integers(0, 2),
        st.integers(0, 2),
        st.integers(0, 10_000),
    ),
    max_size=40,
)


def home_write(registry: Registry, salt: int) -> None:
    agent = f"{registry.node_id}-a{salt % 4}"
    state = [AgentState.AVAILABLE, AgentState.TALKING, AgentState.OFFLINE][salt % 3]
    registry.write_agent(
        AgentRecord(
            agent,
            registry.node_id,
            "site-a",
            Trust.INHOUSE,
            1,
            (("sales", 1 + salt % 10),),
            state,
            state_since_ms=salt,
        )
    )


def reconcile_pair(a: Registry, b: Registry) -> None:
    answer = b.reconcile(a.digest())
    a.apply_delta(answer.entries)
    b.apply_delta(a.entries_needed(answer))


@given(ops, st.randoms(use_true_random=False))
def test_lossy_reordered_duplicated_deltas_then_one_round_converge(
    script: list[Op], rnd: random.Random
) -> None:
    nodes = [Registry(n, fixed_clock()) for n in NODES]
    in_flight: list[tuple[int, Delta]] = []
    for op, i, j, salt in script:
        if op == "write" and salt % 5 == 0:
            nodes[i].write_node(
                NodeInfo(NODES[i], "site-a", Trust.INHOUSE, "h:1", "h:2", up=salt % 2 == 0)
            )
        elif op == "write":
            home_write(nodes[i], salt)
        elif op == "queue":
            nodes[i].write_queue(QueueSummary(NODES[i], f"q{salt % 2}", salt % 7, salt, 0, ()))
        else:
            # a delta since a random watermark (delivered out of order, duplicated or dropped)
            delta = nodes[i].delta_since(rnd.randint(0, nodes[i].seq), NODES[j])
            if delta is not None and i != j:
                in_flight.append((j, delta))
        rnd.shuffle(in_flight)
        while in_flight and rnd.random() < 0.5:
            target, delta = in_flight.pop()
            if rnd.random() < 0.2:
                in_flight.append((target, delta))  # duplicated
            if rnd.random() < 0.7:  # else lost
                nodes[target].apply_delta(delta)
    for x in range(3):
        for y in range(x + 1, 3):
            reconcile_pair(nodes[x], nodes[y])
    assert nodes[0].snapshot() == nodes[1].snapshot() == nodes[2].snapshot()
    assert nodes[0].digest().agent_buckets == nodes[2].digest().agent_buckets


def test_full_state_in_chunks_brings_a_new_peer_up_to_date() -> None:
    old = replica("n1")
    for i in range(1_234):
        home_write(old, i * 4 + i // 4)  # only 4 agents, many versions
    for i in range(1_100):
        old.apply([agent(f"x{i}", "n2")], [], source="n2")
    chunks = old.full_state(chunk_entries=500)
    assert [c.index for c in chunks] == [0, 1, 2]
    assert all(c.count == 3 and len(c.agents) + len(c.queues) <= 500 for c in chunks)
    new = replica("n3")
    for chunk in reversed(chunks):
        new.apply_chunk(chunk)
    assert new.snapshot() == old.snapshot()


def agent(agent_id: str, home: str, epoch: int = 1, clock: int = 1) -> AgentRecord:
    return AgentRecord(
        agent_id,
        home,
        "site-a",
        Trust.INHOUSE,
        1,
        (),
        AgentState.AVAILABLE,
        epoch=epoch,
        clock=clock,
    )


def test_delta_is_never_echoed_to_its_sender() -> None:
    registry = replica("n1")
    registry.apply([agent("from-n2", "n2")], [], source="n2")
    registry.write_agent(agent("mine", "n1"))
    to_n2 = registry.delta_since(0, "n2")
    to_n3 = registry.delta_since(0, "n3")
    assert to_n2 is not None
    assert to_n3 is not None
    assert [a.agent_id for a in to_n2.agents] == ["mine"]
    assert [a.agent_id for a in to_n3.agents] == ["from-n2", "mine"]
    assert to_n2.to_seq == registry.seq


def test_delta_since_watermark_holds_only_later_changes() -> None:
    registry = replica("n1")
    registry.write_agent(agent("a", "n1"))
    mark = registry.seq
    registry.write_agent(agent("b", "n1"))
    registry.write_agent(agent("a", "n1"))
    delta = registry.delta_since(mark, "n2")
    assert delta is not None
    assert [a.agent_id for a in delta.agents] == ["b", "a"]
    assert registry.delta_since(registry.seq, "n2") == replace(
        delta, from_seq=registry.seq, agents=()
    )


def test_lagging_or_restarted_peer_gets_none_and_needs_full_state() -> None:
    registry = replica("n1")
    registry.apply([agent(f"x{i}", "n2") for i in range(MAX_DELTA_ENTRIES + 1)], [], "n2")
    assert registry.delta_since(0, "n3") is None
    assert registry.delta_since(registry.seq + 5, "n3") is None


# -- only the home node writes -----------------------------------------------------------------


def test_local_write_for_an_agent_homed_elsewhere_is_refused() -> None:
    registry = replica("n1")
    with pytest.raises(ForeignWrite, match="home node n2"):
        registry.write_agent(agent("a", "n2"))
    assert registry.snapshot() == ({}, {}, {})


def test_local_write_over_a_foreign_session_needs_a_higher_epoch() -> None:
    registry = replica("n1")
    registry.apply([agent("a", "n2", epoch=3)], [], source="n2")
    with pytest.raises(ForeignWrite, match="homed on n2 at epoch 3"):
        registry.write_agent(agent("a", "n1", epoch=3))
    with pytest.raises(StaleEpoch, match="epoch 2 is older"):
        registry.write_agent(agent("a", "n1", epoch=2))
    taken = registry.write_agent(agent("a", "n1", epoch=4))
    assert registry.agent("a") == taken
    assert taken.clock > 0


def test_foreign_queue_summary_or_node_info_write_is_refused() -> None:
    registry = replica("n1")
    with pytest.raises(ForeignWrite):
        registry.write_queue(QueueSummary("n2", "sales", 1, 0, 0, ()))
    with pytest.raises(ForeignWrite, match="addresses of n2"):
        registry.write_node(NodeInfo("n2", "site-a", Trust.INHOUSE, "h:1", "h:2"))
    assert len(registry) == 0


def test_batch_with_a_timestamp_too_far_ahead_changes_nothing() -> None:
    registry = replica("n1")
    good = agent("a", "n2", clock=pack(NOW_MS - 10))
    bad = agent("b", "n2", clock=pack(NOW_MS + 10_000))
    with pytest.raises(ClockSkew):
        registry.apply([good, bad], [], source="n2")
    assert registry.snapshot() == ({}, {}, {})
    assert registry.clock.refused == 1


def test_digest_with_other_bucket_counts_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="buckets"):
        replica().reconcile(Digest("n2", 0, (0,) * 3, (0,) * 32, (0,) * 16))
