"""`callmesh bench registry`: merge, decode and full-sync speed of one registry replica.

Runs in one process (one core). Each figure is the best of a few repetitions, so a stray pause
on a busy machine does not set it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from registry.clock import HybridClock
from registry.codec import decode_chunk, decode_delta, encode_chunk, encode_delta
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry
from registry.sync import Delta

AGENTS = 10_000
DELTA_ENTRIES = 100
DELTAS = 500
REPEATS = 5
SKILLS = ["billing", "english", "french", "german", "sales", "support", "tech", "vip"]
TARGETS = {
    "merges_per_s": (">=", 200_000),
    "decode_merge_per_s": (">=", 100_000),
    "bytes_per_update": ("<=", 128),
    "full_sync_10k_ms": ("<=", 150),
}


def _record(rnd: random.Random, i: int, home: str) -> AgentRecord:
    """Agent i in a random state; its skills are its own (3 of SKILLS), as in a real center,
    where an agent's skills stay put while its state changes."""
    state = rnd.choice(list(AgentState))
    own = random.Random(i)
    skills = tuple(sorted((s, own.randint(1, 10)) for s in own.sample(SKILLS, 3)))
    return AgentRecord(
        agent_id=f"agent-{i:05d}",
        home_node=home,
        site="site-a",
        trust=Trust.INHOUSE,
        tier=1 + i % 2,
        skills=skills,
        state=state,
        reason="break" if state is AgentState.NOT_READY else "",
        state_since_ms=time.time_ns() // 1_000_000,
        capacity=1,
        active_calls=1 if state in (AgentState.RESERVED, AgentState.TALKING) else 0,
        epoch=1,
    )


def _source(rnd: random.Random) -> Registry:
    source = Registry("site-a-n1")
    for i in range(AGENTS):
        source.write_agent(_record(rnd, i, "site-a-n1"))
    return source


def _updates(rnd: random.Random, source: Registry) -> list[Delta]:
    """DELTAS deltas of DELTA_ENTRIES changed agents each, as the gossip loop would send them."""
    deltas = []
    for _ in range(DELTAS):
        mark = source.seq
        for i in rnd.sample(range(AGENTS), DELTA_ENTRIES):
            source.write_agent(_record(rnd, i, "site-a-n1"))
        delta = source.delta_since(mark, "peer")
        assert delta is not None
        deltas.append(delta)
    return deltas


def _best(run: Callable[[], float]) -> float:
    return min(run() for _ in range(REPEATS))


def run(out: Callable[[str], None] = print) -> dict[str, float]:
    rnd = random.Random(7)
    source = _source(rnd)
    deltas = _updates(rnd, source)
    encoded = [encode_delta(d) for d in deltas]
    entries = sum(len(d) for d in deltas)

    def merge_only() -> float:
        replica = Registry("site-b-n1", HybridClock())
        start = time.perf_counter()
        for delta in deltas:
            replica.apply_delta(delta)
        return time.perf_counter() - start

    def decode_and_merge() -> float:
        replica = Registry("site-b-n1", HybridClock())
        start = time.perf_counter()
        for data in encoded:
            replica.apply_delta(decode_delta(data))
        return time.perf_counter() - start

    one_agent = []
    for i in rnd.sample(range(AGENTS), 1_000):
        mark = source.seq
        source.write_agent(_record(rnd, i, "site-a-n1"))
        delta = source.delta_since(mark, "peer")
        assert delta is not None
        one_agent.append(len(encode_delta(delta)))

    def full_sync() -> float:
        replica = Registry("site-b-n1", HybridClock())
        start = time.perf_counter()
        for data in [encode_chunk(c) for c in source.full_state()]:
            replica.apply_chunk(decode_chunk(data))
        elapsed = time.perf_counter() - start
        assert len(replica.agents()) == AGENTS
        return elapsed

    figures = {
        "merges_per_s": round(entries / _best(merge_only)),
        "decode_merge_per_s": round(entries / _best(decode_and_merge)),
        "bytes_per_update": round(sum(one_agent) / len(one_agent), 1),
        "full_sync_10k_ms": round(_best(full_sync) * 1000, 1),
    }
    out(f"registry: {AGENTS} agents, {DELTAS} deltas of {DELTA_ENTRIES} entries, best of {REPEATS}")
    for name, value in figures.items():
        op, target = TARGETS[name]
        met = value >= target if op == ">=" else value <= target
        out(f"  {name:20} {value:>12,}   target {op} {target:,}  {'ok' if met else 'MISSED'}")
    return figures
