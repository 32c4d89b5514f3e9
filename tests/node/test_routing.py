"""Routing decisions: examples of the escalation steps and the ranking, and their laws."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.queues import ALL_TIERS, ALL_TRUSTS, QueueConfig, Step
from node.routing import (
    AgentIndex,
    Candidate,
    current_step,
    eligible,
    pick_queue,
    rank_agents,
    rank_candidates,
    reached_steps,
)
from registry.records import AgentRecord, AgentState, QueueSummary, Trust
from registry.registry import Registry

A = AgentState
PARTNERS_FIRST = (
    Step(0.0, frozenset({1}), frozenset({Trust.PARTNER})),
    Step(30.0, frozenset({2}), frozenset({Trust.INHOUSE})),
)
SALES = QueueConfig("sales", (("sales", 3),), priority=10, steps=PARTNERS_FIRST)


def agent(
    agent_id: str,
    *,
    site: str = "site-a",
    trust: Trust = Trust.INHOUSE,
    tier: int = 2,
    skills: dict[str, int] | None = None,
    state: AgentState = A.AVAILABLE,
    since: int = 0,
    capacity: int = 1,
    active: int = 0,
    home: str = "n1",
) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id,
        home_node=home,
        site=site,
        trust=trust,
        tier=tier,
        skills=tuple(sorted((skills if skills is not None else {"sales": 5}).items())),
        state=state,
        reason="break" if state is A.NOT_READY else "",
        state_since_ms=since,
        capacity=capacity,
        active_calls=active,
    )


def partner(agent_id: str, **kwargs: Any) -> AgentRecord:
    return agent(agent_id, site="partner-c", trust=Trust.PARTNER, tier=1, **kwargs)


def ids(agents: list[AgentRecord]) -> list[str]:
    return [a.agent_id for a in agents]


# -- the steps ---------------------------------------------------------------------------------


def test_tier_1_partners_first_specialists_after_30_s() -> None:
    agents = [partner("p1", since=5), agent("s1", skills={"sales": 9})]
    assert ids(rank_agents(agents, SALES, 0, "site-a")) == ["p1"]
    assert ids(rank_agents(agents, SALES, 29.9, "site-a")) == ["p1"]
    assert ids(rank_agents(agents, SALES, 30, "site-a")) == ["s1", "p1"]  # s1 is more skilled
    assert current_step(SALES, 29.9, agents) == PARTNERS_FIRST[0]
    assert current_step(SALES, 30, agents) == PARTNERS_FIRST[1]
    assert reached_steps(SALES, 45, agents) == PARTNERS_FIRST


@pytest.mark.parametrize("state", [A.OFFLINE])
def test_specialists_at_once_when_no_tier_1_is_logged_in(state: AgentState) -> None:
    agents = [partner("p1", state=state), agent("s1")]
    assert ids(rank_agents(agents, SALES, 0, "site-a")) == ["s1"]
    assert current_step(SALES, 0, agents) == PARTNERS_FIRST[1]
    assert ids(rank_agents([agent("s1")], SALES, 0, "site-a")) == ["s1"]


@pytest.mark.parametrize("state", [A.TALKING, A.RESERVED, A.WRAP_UP, A.NOT_READY, A.AVAILABLE])
def test_a_logged_in_tier_1_agent_holds_the_specialists_back(state: AgentState) -> None:
    """Busy, on a break or already full: the call waits for tier 1 until the step's time."""
    p1 = partner("p1", state=state, active=1 if state in (A.TALKING, A.RESERVED) else 0)
    agents = [replace(p1, active_calls=1) if state is A.AVAILABLE else p1, agent("s1")]
    assert rank_agents(agents, SALES, 10, "site-a") == []
    assert current_step(SALES, 10, agents) == PARTNERS_FIRST[0]
    assert ids(rank_agents(agents, SALES, 30, "site-a")) == ["s1"]


def test_tier_1_agents_who_could_not_take_the_call_do_not_hold_it_back() -> None:
    unskilled = partner("p1", skills={"sales": 2}, state=A.TALKING, active=1)
    elsewhere = partner("p2", state=A.TALKING, active=1)
    specialist = agent("s1")
    assert ids(rank_agents([unskilled, specialist], SALES, 0, "site-a")) == ["s1"]
    assert rank_agents([elsewhere, specialist], SALES, 0, "site-a") == []
    # the call already went to p2, who missed it: no need to wait for p2 again
    ranked = rank_agents([elsewhere, specialist], SALES, 0, "site-a", exclude=frozenset({"p2"}))
    assert ids(ranked) == ["s1"]
    assert (
        current_step(SALES, 0, [elsewhere, specialist], exclude=frozenset({"p2"}))
        == (PARTNERS_FIRST[1])
    )


def test_escalation_goes_one_step_at_a_time() -> None:
    steps = (
        Step(0.0, frozenset({1}), ALL_TRUSTS),
        Step(20.0, frozenset({2}), ALL_TRUSTS),
        Step(40.0, frozenset({3}), ALL_TRUSTS),
    )
    queue = QueueConfig("q", (), steps=steps)
    tier2_busy = agent("t2", tier=2, state=A.TALKING, active=1)
    tier3 = agent("t3", tier=3)
    # nobody of tier 1: tier 2 applies at once, and tier 2 is logged in, so tier 3 waits for 40 s
    assert rank_agents([tier2_busy, tier3], queue, 0, "site-a") == []
    assert current_step(queue, 0, [tier2_busy, tier3]) == steps[1]
    assert ids(rank_agents([tier2_busy, tier3], queue, 40, "site-a")) == ["t3"]
    # nobody of tiers 1 and 2: tier 3 at once
    assert ids(rank_agents([tier3], queue, 0, "site-a")) == ["t3"]
    assert current_step(queue, 0, []) == steps[2]


def test_a_step_may_name_its_sites() -> None:
    steps = (Step(0.0, ALL_TIERS, ALL_TRUSTS, frozenset({"site-b"})),)
    queue = QueueConfig("q", (), steps=steps)
    agents = [agent("a1", site="site-a"), agent("b1", site="site-b")]
    assert ids(rank_agents(agents, queue, 0, "site-a")) == ["b1"]


# -- who is eligible ---------------------------------------------------------------------------


def test_skill_minimums() -> None:
    queue = QueueConfig("q", (("billing", 2), ("sales", 3)))
    agents = [
        agent("low", skills={"billing": 2, "sales": 2}),
        agent("ok", skills={"billing": 2, "sales": 3}),
        agent("one", skills={"sales": 9}),
        agent("none", skills={}),
        agent("more", skills={"billing": 10, "french": 1, "sales": 10}),
    ]
    assert ids(rank_agents(agents, queue, 0, "site-a")) == ["more", "ok"]
    assert ids(rank_agents(agents, QueueConfig("any", ()), 0, "site-a")) == sorted(ids(agents))


def test_capacity() -> None:
    agents = [
        agent("full", capacity=1, active=1),
        agent("room", capacity=2, active=1),
        agent("fuller", capacity=2, active=2),
    ]
    assert ids(rank_agents(agents, SALES, 60, "site-a")) == ["room"]


@pytest.mark.parametrize("state", [A.OFFLINE, A.NOT_READY, A.RESERVED, A.TALKING, A.WRAP_UP])
def test_only_available_agents_are_offered(state: AgentState) -> None:
    agents = [agent("x", state=state), agent("y", since=1)]
    assert ids(rank_agents(agents, SALES, 60, "site-a")) == ["y"]
    assert not eligible(agents[0], SALES, SALES.steps)
    assert eligible(agents[1], SALES, SALES.steps)


def test_exclude() -> None:
    agents = [agent("a"), agent("b"), agent("c")]
    ranked = rank_agents(agents, SALES, 60, "site-a", exclude=frozenset({"a", "c"}))
    assert ids(ranked) == ["b"]


# -- the order ---------------------------------------------------------------------------------


def test_skill_then_idle_then_site_then_id() -> None:
    agents = [
        agent("z-expert", skills={"sales": 9}, since=500, site="site-b"),
        agent("y-idle-longest", since=100, site="site-b"),
        agent("x-remote", since=200, site="site-b"),
        agent("w-local", since=200, site="site-a"),
        agent("b-tie", since=300),
        agent("a-tie", since=300),
    ]
    expected = ["z-expert", "y-idle-longest", "w-local", "x-remote", "a-tie", "b-tie"]
    assert ids(rank_agents(agents, SALES, 60, "site-a")) == expected
    assert rank_candidates(agents, SALES, 60, "site-a")[:3] == [
        Candidate(agents[0], 9, 500, True),
        Candidate(agents[1], 5, 100, True),
        Candidate(agents[3], 5, 200, False),
    ]
    # without a cost for crossing sites, the agent id decides
    no_cost = ids(rank_agents(agents, SALES, 60, "site-a", cross_site_cost=0))
    assert no_cost[2:4] == ["w-local", "x-remote"]
    assert ids(rank_agents(agents, SALES, 60, "site-b"))[2:4] == ["x-remote", "w-local"]


def test_the_skill_score_sums_the_required_skills() -> None:
    queue = QueueConfig("q", (("billing", 1), ("sales", 1)))
    agents = [
        agent("a", skills={"billing": 9, "sales": 1}),  # 10
        agent("b", skills={"billing": 5, "sales": 6}),  # 11
        agent("c", skills={"billing": 1, "sales": 1, "vip": 10}),  # 2
    ]
    assert ids(rank_agents(agents, queue, 0, "site-a")) == ["b", "a", "c"]


# -- pulling the best waiting call --------------------------------------------------------------

QUEUES = {
    "sales": SALES,
    "support": QueueConfig("support", (("support", 1),), priority=5),
    "vip": QueueConfig("vip", (("sales", 8),), priority=50),
}
NOW = 1_000_000


def waiting(
    node: str, queue: str, age_s: float, *, count: int = 1, priority: int = 0
) -> QueueSummary:
    return QueueSummary(
        node=node,
        queue=queue,
        waiting=count,
        oldest_since_ms=NOW - int(age_s * 1000),
        top_priority=priority,
        required_skills=QUEUES[queue].skills if queue in QUEUES else (),
    )


def test_pick_queue_serves_priority_then_the_oldest_call_anywhere() -> None:
    me = agent("me", skills={"sales": 5, "support": 5})
    summaries = [
        waiting("n1", "support", 50, priority=5),
        waiting("n2", "sales", 40, priority=10),
        waiting("n3", "sales", 45, priority=10),
        waiting("n4", "sales", 90, priority=10, count=0),  # nothing waits there any more
        waiting("n5", "vip", 99, priority=50),  # me lacks the level
    ]
    assert pick_queue(summaries, me, QUEUES, NOW) == summaries[2]
    assert pick_queue(summaries[:1], me, QUEUES, NOW) == summaries[0]
    assert pick_queue(summaries[3:], me, QUEUES, NOW) is None


def test_pick_queue_ties_go_to_node_then_queue() -> None:
    me = agent("me", skills={"sales": 5, "support": 5})
    tied = [waiting("n2", "sales", 40), waiting("n1", "support", 40), waiting("n1", "sales", 40)]
    assert pick_queue(tied, me, QUEUES, NOW) == tied[2]


def test_pick_queue_respects_the_step_of_the_oldest_call() -> None:
    specialist = agent("s1")
    young = [waiting("n1", "sales", 10, priority=10)]
    old = [waiting("n1", "sales", 31, priority=10)]
    assert pick_queue(young, specialist, QUEUES, NOW) is None
    assert pick_queue(old, specialist, QUEUES, NOW) == old[0]
    # nobody of tier 1 is logged in: the specialist may pull at once
    assert pick_queue(young, specialist, QUEUES, NOW, agents=[specialist]) == young[0]
    busy_partner = partner("p1", state=A.TALKING, active=1)
    assert pick_queue(young, specialist, QUEUES, NOW, agents=[specialist, busy_partner]) is None


def test_pick_queue_skips_unknown_queues_and_busy_agents() -> None:
    me = agent("me")
    assert pick_queue([waiting("n1", "other", 99)], me, QUEUES, NOW) is None
    summaries = [waiting("n1", "sales", 99)]
    assert pick_queue(summaries, me, QUEUES, NOW) == summaries[0]
    assert pick_queue(summaries, replace(me, state=A.WRAP_UP), QUEUES, NOW) is None
    assert pick_queue(summaries, replace(me, active_calls=1), QUEUES, NOW) is None


# -- the index -----------------------------------------------------------------------------------


def test_the_index_follows_the_registry() -> None:
    registry = Registry("n1")
    for record in [partner("p1", home="n1"), agent("s1"), agent("s2", state=A.TALKING, active=1)]:
        registry.write_agent(record)
    index = AgentIndex()
    assert index.refresh(registry) == 3
    assert index.refresh(registry) == 0
    assert ids(rank_agents(index, SALES, 0, "site-a")) == ["p1"]
    registry.write_agent(replace(partner("p1"), state=A.OFFLINE))
    registry.write_agent(agent("s2", since=1))
    assert index.refresh(registry) == 2
    assert len(index) == 3
    assert ids(rank_agents(index, SALES, 0, "site-a")) == ["s1", "s2"]
    other = Registry("n1")
    other.write_agent(agent("s3"))
    assert index.refresh(other) == 1  # another registry: start over
    assert ids(list(index)) == ["s3"]


def test_the_index_rebuilds_when_too_much_changed() -> None:
    registry = Registry("n1")
    index = AgentIndex()
    for i in range(2_100):
        registry.write_agent(agent(f"a{i}", since=i))
    index.refresh(registry)
    for i in range(2_100):
        registry.write_agent(agent(f"a{i}", since=i, state=A.OFFLINE))
    registry.write_agent(agent("a7"))
    assert index.refresh(registry) == 2_100
    assert ids(rank_agents(index, SALES, 60, "site-a")) == ["a7"]


# -- laws --------------------------------------------------------------------------------------

SITES = ["site-a", "site-b", "partner-c"]
SKILLS = ["sales", "support", "billing"]


@st.composite
def agents_(draw: st.DrawFn, agent_id: str) -> AgentRecord:
    state = draw(st.sampled_from(AgentState))
    capacity = draw(st.integers(1, 2))
    return AgentRecord(
        agent_id=agent_id,
        home_node=draw(st.sampled_from(["n1", "n2"])),
        site=draw(st.sampled_from(SITES)),
        trust=draw(st.sampled_from(Trust)),
        tier=draw(st.integers(1, 3)),
        skills=tuple(
            sorted(draw(st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 10))).items())
        ),
        state=state,
        reason="break" if state is A.NOT_READY else "",
        state_since_ms=draw(st.integers(0, 5)),  # small: ties happen
        capacity=capacity,
        active_calls=draw(st.integers(0, capacity)),
    )


@st.composite
def views(draw: st.DrawFn) -> list[AgentRecord]:
    names = draw(st.lists(st.sampled_from([f"a{i}" for i in range(12)]), unique=True, max_size=12))
    return [draw(agents_(name)) for name in names]


@st.composite
def queues(draw: st.DrawFn) -> QueueConfig:
    later = sorted(draw(st.sets(st.integers(1, 60), max_size=2)))
    steps = tuple(
        Step(
            float(after_s),
            frozenset(draw(st.sets(st.integers(1, 3), min_size=1))),
            frozenset(draw(st.sets(st.sampled_from(Trust), min_size=1))),
            draw(st.none() | st.frozensets(st.sampled_from(SITES), min_size=1)),
        )
        for after_s in [0, *later]
    )
    skills = draw(st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 6), max_size=2))
    return QueueConfig("q", tuple(sorted(skills.items())), steps=steps)


waits = st.integers(0, 700).map(lambda n: n / 10)
excludes = st.frozensets(st.sampled_from([f"a{i}" for i in range(12)]), max_size=3)


def skill_score(agent: AgentRecord, queue: QueueConfig) -> int:
    return sum(agent.level(name) for name, _ in queue.skills)


def reference_reached(
    queue: QueueConfig, waited_s: float, agents: list[AgentRecord], exclude: frozenset[str]
) -> int:
    """The rule as the routing module's docstring states it, written the slow, plain way."""

    def could_take(a: AgentRecord, steps: tuple[Step, ...]) -> bool:
        return (
            a.state is not A.OFFLINE
            and a.agent_id not in exclude
            and all(a.level(name) >= minimum for name, minimum in queue.skills)
            and any(
                a.tier in s.tiers and a.trust in s.trusts and (s.sites is None or a.site in s.sites)
                for s in steps
            )
        )

    reached = max(i for i, s in enumerate(queue.steps) if s.after_s <= waited_s)
    while reached < len(queue.steps) - 1 and not any(
        could_take(a, queue.steps[: reached + 1]) for a in agents
    ):
        reached += 1
    return reached


@given(views(), queues(), waits, excludes)
def test_the_reached_step_follows_the_stated_rule(
    agents: list[AgentRecord], queue: QueueConfig, waited_s: float, exclude: frozenset[str]
) -> None:
    expected = queue.steps[reference_reached(queue, waited_s, agents, exclude)]
    assert current_step(queue, waited_s, agents, exclude=exclude) == expected
    assert current_step(queue, waited_s, AgentIndex(agents), exclude=exclude) == expected


@given(views(), queues(), waits, excludes, st.sampled_from(SITES))
def test_the_ranking_is_exactly_the_eligible_agents(
    agents: list[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    exclude: frozenset[str],
    site: str,
) -> None:
    ranked = rank_agents(agents, queue, waited_s, site, exclude=exclude)
    steps = reached_steps(queue, waited_s, agents, exclude=exclude)
    expected = [a for a in agents if a.agent_id not in exclude and eligible(a, queue, steps)]
    assert sorted(ids(ranked)) == sorted(ids(expected))
    assert len(set(ids(ranked))) == len(ranked)


@given(views(), queues(), waits, excludes, st.sampled_from(SITES), st.randoms())
def test_the_ranking_does_not_depend_on_the_input_order(
    agents: list[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    exclude: frozenset[str],
    site: str,
    rnd: random.Random,
) -> None:
    ranked = rank_agents(agents, queue, waited_s, site, exclude=exclude)
    shuffled = list(agents)
    rnd.shuffle(shuffled)
    assert rank_agents(shuffled, queue, waited_s, site, exclude=exclude) == ranked
    assert rank_agents(iter(shuffled), queue, waited_s, site, exclude=exclude) == ranked
    assert rank_agents(AgentIndex(shuffled), queue, waited_s, site, exclude=exclude) == ranked


@given(views(), queues(), waits, st.sampled_from(SITES))
def test_a_better_skill_score_never_ranks_below_a_worse_one(
    agents: list[AgentRecord], queue: QueueConfig, waited_s: float, site: str
) -> None:
    ranked = rank_agents(agents, queue, waited_s, site)
    keys = [(-skill_score(a, queue), a.state_since_ms, a.site != site, a.agent_id) for a in ranked]
    assert keys == sorted(keys)


@given(views(), queues(), waits, waits, excludes)
def test_waiting_longer_never_loses_an_agent(
    agents: list[AgentRecord], queue: QueueConfig, one: float, two: float, exclude: frozenset[str]
) -> None:
    early, late = sorted((one, two))
    before = set(ids(rank_agents(agents, queue, early, "site-a", exclude=exclude)))
    after = set(ids(rank_agents(agents, queue, late, "site-a", exclude=exclude)))
    assert before <= after


@st.composite
def summaries(draw: st.DrawFn) -> QueueSummary:
    return QueueSummary(
        node=draw(st.sampled_from(["n1", "n2", "n3"])),
        queue=draw(st.sampled_from(["q", "r", "unknown"])),
        waiting=draw(st.integers(0, 3)),
        oldest_since_ms=draw(st.integers(0, 80_000)),
        top_priority=draw(st.integers(-2, 2)),
        required_skills=(),
    )


@given(
    st.lists(summaries(), unique_by=lambda s: s.key, max_size=9),
    agents_("me"),
    queues(),
    queues(),
    views(),
)
def test_pick_queue_takes_the_best_queue_the_agent_may_take(
    found: list[QueueSummary],
    me: AgentRecord,
    q: QueueConfig,
    r: QueueConfig,
    agents: list[AgentRecord],
) -> None:
    configs = {"q": q, "r": replace(r, name="r")}
    now_ms = 80_000
    for view in (None, [me, *agents]):
        picked = pick_queue(found, me, configs, now_ms, agents=view)

        def may_take(s: QueueSummary, view: list[AgentRecord] | None = view) -> bool:
            config = configs.get(s.queue)
            if config is None or s.waiting == 0:
                return False
            waited_s = (now_ms - s.oldest_since_ms) / 1000
            if view is None:
                steps = tuple(step for step in config.steps if step.after_s <= waited_s)
            else:
                steps = reached_steps(config, waited_s, view)
            return eligible(me, config, steps)

        takeable = [s for s in found if may_take(s)]
        if not takeable:
            assert picked is None
            continue
        assert picked is not None
        assert picked.waiting > 0
        assert may_take(picked)
        best = min(takeable, key=lambda s: (-s.top_priority, s.oldest_since_ms, s.node, s.queue))
        assert picked == best


@given(views(), views(), queues(), waits, st.sampled_from(SITES))
def test_an_index_kept_up_to_date_ranks_as_the_registry_view(
    before: list[AgentRecord],
    after: list[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    site: str,
) -> None:
    index = AgentIndex(before)
    for record in after:
        index.put(record)
    current = {a.agent_id: a for a in [*before, *after]}
    view = list(current.values())
    assert sorted(ids(list(index))) == sorted(current)
    assert rank_agents(index, queue, waited_s, site) == rank_agents(view, queue, waited_s, site)
    assert current_step(queue, waited_s, index) == current_step(queue, waited_s, view)
