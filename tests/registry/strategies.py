"""Hypothesis strategies for registry values."""

from __future__ import annotations

from hypothesis import strategies as st

from registry.records import AgentRecord, AgentState, NodeInfo, QueueSummary, Trust

NODES = ["n1", "n2", "n3"]
AGENTS = [f"a{i}" for i in range(6)]

AGENT_IDS = st.sampled_from(AGENTS)
HOMES = st.sampled_from(NODES)
ids = st.from_regex(r"[a-z0-9][a-z0-9._:@-]{0,8}", fullmatch=True)
skills = st.dictionaries(ids, st.integers(1, 10), max_size=4).map(
    lambda d: tuple(sorted(d.items()))
)


@st.composite
def agent_records(
    draw: st.DrawFn,
    agent_ids: st.SearchStrategy[str] = AGENT_IDS,
    homes: st.SearchStrategy[str] = HOMES,
) -> AgentRecord:
    state = draw(st.sampled_from(AgentState))
    capacity = draw(st.integers(1, 3))
    return AgentRecord(
        agent_id=draw(agent_ids),
        home_node=draw(homes),
        site=draw(st.sampled_from(["site-a", "site-b"])),
        trust=draw(st.sampled_from(Trust)),
        tier=draw(st.integers(1, 3)),
        skills=draw(skills),
        state=state,
        reason="lunch" if state is AgentState.NOT_READY else "",
        state_since_ms=draw(st.integers(0, 2**40)),
        capacity=capacity,
        active_calls=draw(st.integers(0, capacity)),
        epoch=draw(st.integers(0, 3)),
        clock=draw(st.integers(0, 2**40)),
    )


@st.composite
def queue_summaries(draw: st.DrawFn) -> QueueSummary:
    return QueueSummary(
        node=draw(st.sampled_from(NODES)),
        queue=draw(st.sampled_from(["sales", "support"])),
        waiting=draw(st.integers(0, 100)),
        oldest_since_ms=draw(st.integers(0, 2**40)),
        top_priority=draw(st.integers(-5, 5)),
        required_skills=draw(skills),
        clock=draw(st.integers(0, 2**40)),
    )


@st.composite
def node_infos(draw: st.DrawFn) -> NodeInfo:
    return NodeInfo(
        node_id=draw(HOMES),
        site=draw(st.sampled_from(["site-a", "site-b"])),
        trust=draw(st.sampled_from(Trust)),
        grpc=f"127.0.0.{draw(st.integers(1, 3))}:{draw(st.integers(1, 65535))}",
        http=draw(st.sampled_from(["localhost:80", "[::1]:8080", "node-1.site-a.svc:8080"])),
        gateway=draw(st.booleans()),
        up=draw(st.booleans()),
        clock=draw(st.integers(0, 2**40)),
    )
