"""The invariants of DESIGN.md §3 checked over a recorded history. Pure: values in, values out.

- I1: no agent reserved beyond its capacity at any etcd revision of its site (the slot keys),
  every logged reservation backed by its slot key, and no agent talking on more calls than its
  capacity at any moment (answered legs, all owners).
- I2: no call bridged to two agents at once (consultation legs are explicit, so not counted).
- I3: every accepted call has exactly one record, with exactly one terminal outcome, and a
  failed call names its reason.
- I4: every node's registry equal within the bound after the last heal (the seconds from the last
  heal to the first poll that found them all equal, measured during the run), and equal at the
  end.
- END: no agent left reserved or talking, no reservation slot left in etcd.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from chaos.history import AgentView, History, Leg

INVARIANTS = ("I1", "I2", "I3", "I4", "END")
TERMINAL = frozenset({"completed", "abandoned", "voicemail", "overflowed", "failed"})
BUSY_STATES = frozenset({"reserved", "talking"})
OPEN = 1 << 62  # the end of a leg that never ended


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str  # one of INVARIANTS
    subject: str  # the agent, call or node it concerns
    what: str

    def __str__(self) -> str:
        return f"{self.invariant} {self.subject}: {self.what}"


def check(history: History) -> list[Violation]:
    """Every violation in the history, by invariant then subject."""
    return [
        *check_i1(history),
        *check_i2(history),
        *check_i3(history),
        *check_i4(history),
        *check_end(history),
    ]


def count(violations: Iterable[Violation]) -> dict[str, int]:
    counts = dict.fromkeys(INVARIANTS, 0)
    for violation in violations:
        counts[violation.invariant] += 1
    return counts


# -- I1 -------------------------------------------------------------------------------------------


def check_i1(history: History) -> list[Violation]:
    found: list[Violation] = []

    def capacity(agent: str) -> int:
        return history.capacities.get(agent, 1)

    by_site: dict[str, list[tuple[int, bool, str, int, str]]] = defaultdict(list)
    for e in history.slots:
        by_site[e.site].append((e.revision, e.put, e.agent, e.slot, e.call))
    puts: set[tuple[str, int]] = set()  # (agent, revision) of every slot written
    for site, events in sorted(by_site.items()):
        live: dict[str, dict[int, str]] = defaultdict(dict)  # agent -> slot -> call
        reported: set[str] = set()
        for revision, put, agent, slot, call in sorted(events, key=lambda e: (e[0], not e[1])):
            if put:
                live[agent][slot] = call
                puts.add((agent, revision))
            else:
                live[agent].pop(slot, None)
            if len(live[agent]) > capacity(agent) and agent not in reported:
                reported.add(agent)
                calls = ", ".join(sorted(live[agent].values()))
                found.append(
                    Violation(
                        "I1",
                        agent,
                        f"reserved for {len(live[agent])} calls ({calls}) at revision {revision} "
                        f"of {site}, capacity {capacity(agent)}",
                    )
                )
    if history.slots:
        for entry in history.reservations:
            if (
                entry.op == "reserve"
                and entry.revision
                and (entry.agent, entry.revision) not in puts
            ):
                found.append(
                    Violation(
                        "I1",
                        entry.agent,
                        f"{entry.node} logged a reservation for call {entry.call} at revision "
                        f"{entry.revision} that no slot key in etcd backs",
                    )
                )
    found += _logged_beyond_capacity(history)
    found += _talking_beyond_capacity(history)
    return found


def _logged_beyond_capacity(history: History) -> list[Violation]:
    """Replay each node's reservation log: at each reservation, the agent's open reservations
    of that session (epoch) on that node must not exceed its capacity. This sees what the etcd
    history cannot: a slot freed by a release that did not own it, then taken again."""
    found = []
    open_: dict[tuple[str, str, int], set[str]] = defaultdict(set)  # (node, agent, epoch)
    reported: set[str] = set()
    for entry in history.reservations:  # in each node's log order
        if entry.op == "start":
            for key in [k for k in open_ if k[0] == entry.node]:
                del open_[key]
            continue
        key = (entry.node, entry.agent, entry.epoch)
        if entry.op == "release":
            open_[key].discard(entry.call)
            continue
        open_[key].add(entry.call)
        capacity = history.capacities.get(entry.agent, entry.capacity)
        if len(open_[key]) > capacity and entry.agent not in reported:
            reported.add(entry.agent)
            found.append(
                Violation(
                    "I1",
                    entry.agent,
                    f"{entry.node} reserved it for {len(open_[key])} calls at once "
                    f"({', '.join(sorted(open_[key]))}) in session {entry.epoch}, "
                    f"capacity {capacity}",
                )
            )
    return found


def _answered(leg: Leg) -> tuple[int, int] | None:
    """The time the leg's agent talked on it; None when it never answered, or when the leg was
    closed as failed (a restart closes it at the restart time: its real end is unknown)."""
    if leg.answered_ms <= 0 or leg.result == "failed":
        return None
    return leg.answered_ms, leg.ended_ms if leg.ended_ms > 0 else OPEN


def _talking_beyond_capacity(history: History) -> list[Violation]:
    spans: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for leg in history.legs:
        span = _answered(leg)
        if span is not None:
            spans[leg.agent_id].append((*span, leg.call_id))
    found = []
    for agent, agent_spans in sorted(spans.items()):
        peak, calls = _peak(agent_spans)
        if peak > history.capacities.get(agent, 1):
            found.append(
                Violation(
                    "I1", agent, f"talking on {peak} calls at once ({', '.join(sorted(calls))})"
                )
            )
    return found


def _peak(spans: list[tuple[int, int, str]]) -> tuple[int, set[str]]:
    """The most spans open at one instant (a span ending at t does not overlap one starting at
    t), and the calls open then."""
    points = sorted(
        [(start, 1, call) for start, _, call in spans]
        + [(end, -1, call) for _, end, call in spans],
        key=lambda p: (p[0], p[1]),
    )
    open_calls: set[str] = set()
    peak, at_peak = 0, set()
    for _, step, call in points:
        if step > 0:
            open_calls.add(call)
        else:
            open_calls.discard(call)
        if len(open_calls) > peak:
            peak, at_peak = len(open_calls), set(open_calls)
    return peak, at_peak


# -- I2 -------------------------------------------------------------------------------------------


def check_i2(history: History) -> list[Violation]:
    by_call: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for leg in history.legs:
        span = _answered(leg)
        if span is not None and leg.kind == "agent":
            by_call[leg.call_id].append((*span, f"{leg.agent_id}#{leg.seq}"))
    found = []
    for call_id, spans in sorted(by_call.items()):
        peak, legs = _peak(spans)
        if peak > 1:
            found.append(
                Violation(
                    "I2", call_id, f"bridged to {peak} agents at once ({', '.join(sorted(legs))})"
                )
            )
    return found


# -- I3 -------------------------------------------------------------------------------------------


def check_i3(history: History) -> list[Violation]:
    found = []
    rows = defaultdict(list)
    for record in history.records:
        rows[record.call_id].append(record)
    for placed in history.placed:
        if placed.call_id not in rows:
            found.append(
                Violation("I3", placed.call_id, f"accepted by {placed.node} but in no call records")
            )
    for call_id, records in sorted(rows.items()):
        if len(records) > 1:
            holders = ", ".join(sorted(r.node for r in records))
            found.append(Violation("I3", call_id, f"recorded by {len(records)} nodes ({holders})"))
            continue
        record = records[0]
        if record.outcome is None:
            found.append(
                Violation(
                    "I3", call_id, f"no outcome at the end (state {record.state}, {record.node})"
                )
            )
        elif record.outcome not in TERMINAL:
            found.append(Violation("I3", call_id, f"unknown outcome {record.outcome!r}"))
        elif record.outcome == "failed" and not record.reason:
            found.append(Violation("I3", call_id, "failed without a reason"))
    return found


# -- I4 -------------------------------------------------------------------------------------------


def check_i4(history: History) -> list[Violation]:
    views = history.final_views
    if not views:
        return []
    found = []
    took, bound = history.converged_after_s, history.registry_bound_s
    if took is None:
        found.append(
            Violation("I4", "registry", f"registries not equal within {bound:g} s of the last heal")
        )
    elif took > bound:
        found.append(
            Violation(
                "I4",
                "registry",
                f"registries equal only {took:g} s after the last heal (bound {bound:g} s)",
            )
        )
    reference_node = sorted(views)[0]
    reference = _by_agent(views[reference_node])
    for node, agents in sorted(views.items()):
        mine = _by_agent(agents)
        differ = sorted(
            agent for agent in set(mine) | set(reference) if mine.get(agent) != reference.get(agent)
        )
        if differ:
            found.append(
                Violation(
                    "I4",
                    node,
                    f"registry differs from {reference_node}'s on {', '.join(differ[:5])}"
                    + (f" and {len(differ) - 5} more" if len(differ) > 5 else ""),
                )
            )
    return found


def _by_agent(agents: tuple[AgentView, ...]) -> dict[str, AgentView]:
    return {a.agent_id: a for a in agents}


# -- the end --------------------------------------------------------------------------------------


def check_end(history: History) -> list[Violation]:
    found = []
    seen: set[str] = set()
    for node, agents in sorted(history.final_views.items()):
        for agent in agents:
            busy = agent.state in BUSY_STATES or agent.active_calls > 0
            if busy and agent.agent_id not in seen:
                seen.add(agent.agent_id)
                found.append(
                    Violation(
                        "END",
                        agent.agent_id,
                        f"left {agent.state} with {agent.active_calls} calls (as {node} sees it)",
                    )
                )
    live: dict[tuple[str, str, int], str] = {}
    for e in sorted(history.slots, key=lambda e: (e.site, e.revision, not e.put)):
        if e.put:
            live[(e.site, e.agent, e.slot)] = e.call
        else:
            live.pop((e.site, e.agent, e.slot), None)
    for (site, agent_id, slot), call in sorted(live.items()):
        found.append(
            Violation("END", agent_id, f"slot {slot} still held in {site}'s etcd (call {call})")
        )
    return found
