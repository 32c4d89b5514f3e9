"""`callmesh bench routing`, the pure part: how long one routing decision takes.

One decision is `rank_agents` over 10,000 agents with 50 skills (each agent 3-6 skills at random
levels, tiers 1-2, five sites of both trusts, every state), for a random queue needing 1-3 skills
with random minimum levels and one of a few escalation shapes, after a random wait. Runs in one
process (one core).

`decision_us_*` is the node's way: over an `AgentIndex` kept up to date, with CHURN agents
changing state between two decisions (their `put`s are timed apart, as `put_us`). The same
decisions over a plain list (the registry's `agents()`, built once and not counted) are printed
for comparison; both give the same rankings, which the run checks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

from node.queues import ALL_TIERS, ALL_TRUSTS, QueueConfig, Step
from node.routing import AgentIndex, rank_agents
from registry.records import AgentRecord, AgentState, Trust

AGENTS = 10_000
SKILLS = [f"skill-{i:02d}" for i in range(50)]
DECISIONS = 2_000
WARM_UP = 200
CHURN = 5
"""Agent changes between two decisions: 10,000 agents taking ~3-minute calls change state ~200
times a second, while one node makes some tens of decisions a second."""
SITES = {
    "site-a": Trust.INHOUSE,
    "site-b": Trust.INHOUSE,
    "site-c": Trust.INHOUSE,
    "partner-x": Trust.PARTNER,
    "partner-y": Trust.PARTNER,
}
STATES = {  # a busy afternoon
    AgentState.AVAILABLE: 25,
    AgentState.TALKING: 35,
    AgentState.WRAP_UP: 10,
    AgentState.RESERVED: 5,
    AgentState.NOT_READY: 10,
    AgentState.OFFLINE: 15,
}
SHAPES = {
    "anyone": (Step(0.0, ALL_TIERS, ALL_TRUSTS),),
    "partners then specialists": (
        Step(0.0, frozenset({1}), frozenset({Trust.PARTNER})),
        Step(30.0, frozenset({2}), frozenset({Trust.INHOUSE})),
    ),
    "tier 1, then tier 2, then any site": (
        Step(0.0, frozenset({1}), ALL_TRUSTS, frozenset({"site-a", "partner-x"})),
        Step(20.0, frozenset({2}), frozenset({Trust.INHOUSE})),
        Step(40.0, ALL_TIERS, ALL_TRUSTS),
    ),
    "in-house specialists": (Step(0.0, frozenset({2}), frozenset({Trust.INHOUSE})),),
}
TARGETS = {"decision_us_p50": ("<=", 250), "decision_us_p99": ("<=", 1000)}


def _agent(rnd: random.Random, i: int) -> AgentRecord:
    site = rnd.choice(list(SITES))
    state = rnd.choices(list(STATES), weights=list(STATES.values()))[0]
    skills = tuple(sorted((s, rnd.randint(1, 10)) for s in rnd.sample(SKILLS, rnd.randint(3, 6))))
    return AgentRecord(
        agent_id=f"agent-{i:05d}",
        home_node=f"{site}-n{1 + i % 2}",
        site=site,
        trust=SITES[site],
        tier=1 if SITES[site] is Trust.PARTNER or rnd.random() < 0.3 else 2,
        skills=skills,
        state=state,
        reason="break" if state is AgentState.NOT_READY else "",
        state_since_ms=1_700_000_000_000 + rnd.randrange(3_600_000),
        active_calls=1 if state in (AgentState.TALKING, AgentState.RESERVED) else 0,
        epoch=1,
    )


def _queue(rnd: random.Random, i: int) -> QueueConfig:
    needs = rnd.sample(SKILLS, rnd.randint(1, 3))
    return QueueConfig(
        name=f"queue-{i}",
        skills=tuple(sorted((s, rnd.randint(1, 6)) for s in needs)),
        steps=SHAPES[rnd.choice(list(SHAPES))],
    )


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _figures(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return round(_percentile(ordered, 50), 1), round(_percentile(ordered, 99), 1)


def _churn(rnd: random.Random, agent: AgentRecord, now_ms: int) -> AgentRecord:
    state = rnd.choices(list(STATES), weights=list(STATES.values()))[0]
    return replace(
        agent,
        state=state,
        reason="break" if state is AgentState.NOT_READY else "",
        state_since_ms=now_ms,
        active_calls=1 if state in (AgentState.TALKING, AgentState.RESERVED) else 0,
    )


def decision(out: Callable[[str], None] = print) -> dict[str, float]:
    rnd = random.Random(11)
    agents = [_agent(rnd, i) for i in range(AGENTS)]
    work = [
        (_queue(rnd, i), rnd.uniform(0, 60), rnd.choice(list(SITES)))
        for i in range(WARM_UP + DECISIONS)
    ]
    start = time.perf_counter_ns()
    index = AgentIndex(agents)
    build_ms = (time.perf_counter_ns() - start) / 1e6

    over_list: list[float] = []
    over_index: list[float] = []
    puts: list[float] = []
    eligible = 0
    now_ms = 1_700_003_600_000
    for i, (queue, waited_s, site) in enumerate(work):
        for _ in range(CHURN):
            now_ms += 1
            j = rnd.randrange(AGENTS)
            agents[j] = _churn(rnd, agents[j], now_ms)
            start = time.perf_counter_ns()
            index.put(agents[j])
            puts.append((time.perf_counter_ns() - start) / 1000)
        start = time.perf_counter_ns()
        by_index = rank_agents(index, queue, waited_s, site)
        middle = time.perf_counter_ns()
        by_list = rank_agents(agents, queue, waited_s, site)
        end = time.perf_counter_ns()
        if by_index != by_list:
            raise AssertionError(f"index and list rank {queue.name} differently")
        if i >= WARM_UP:
            over_index.append((middle - start) / 1000)
            over_list.append((end - middle) / 1000)
            eligible += len(by_index)

    p50, p99 = _figures(over_index)
    figures = {"decision_us_p50": p50, "decision_us_p99": p99}
    list_p50, list_p99 = _figures(over_list)
    put_p50, put_p99 = _figures(puts)
    out(
        f"routing decision: {AGENTS:,} agents, {len(SKILLS)} skills, {DECISIONS:,} decisions, "
        f"{eligible / DECISIONS:.1f} eligible agents on average"
    )
    for name, value in figures.items():
        op, target = TARGETS[name]
        met = value <= target
        out(f"  {name:20} {value:>12,}   target {op} {target:,}  {'ok' if met else 'MISSED'}")
    out(f"  over a plain list:   p50 {list_p50:,} us, p99 {list_p99:,} us")
    out(f"  index: built in {build_ms:.1f} ms; put p50 {put_p50} us, p99 {put_p99} us")
    return figures
