"""The checker catches each invariant broken in a hand-made history, and passes a clean one."""

from __future__ import annotations

from dataclasses import replace

from chaos.checker import check, count
from chaos.history import (
    AgentView,
    CallRecord,
    History,
    Leg,
    Placed,
    ReservationEntry,
    SlotEvent,
)


def record(
    call_id: str, node: str = "n1", outcome: str | None = "completed", reason: str = ""
) -> CallRecord:
    return CallRecord(node, call_id, node, "chaos", "ended", outcome, reason, 1_000, 2_000, "ann")


def leg(call_id: str, agent: str, answered: int, ended: int, seq: int = 1, **kw: str) -> Leg:
    return Leg(
        call_id,
        seq,
        agent,
        "n2",
        answered - 10,
        answered,
        ended,
        kw.get("result", "completed"),
        kw.get("kind", "agent"),
    )


def view(agent: str, state: str = "available", active: int = 0) -> AgentView:
    return AgentView(agent, "n2", state, active, 1, 1)


def clean() -> History:
    """Two calls, one after the other, to ann; everything released and quiet at the end."""
    return History(
        placed=(Placed("c1", "n1", 1_000), Placed("c2", "n1", 2_000)),
        records=(record("c1"), record("c2", outcome="failed", reason="node restarted")),
        legs=(leg("c1", "ann", 1_100, 1_500), leg("c2", "ann", 1_500, 1_900)),
        reservations=(
            ReservationEntry("n2", "reserve", "ann", "c1", 1, 10, 1_050),
            ReservationEntry("n2", "release", "ann", "c1", 1, 0, 1_510),
            ReservationEntry("n2", "reserve", "ann", "c2", 1, 12, 1_520),
        ),
        slots=(
            SlotEvent("site-a", 10, "ann", 0, True, "c1"),
            SlotEvent("site-a", 11, "ann", 0, False),
            SlotEvent("site-a", 12, "ann", 0, True, "c2"),
            SlotEvent("site-a", 13, "ann", 0, False),  # lapsed with its node's lease
        ),
        capacities={"ann": 1},
        final_views={"n1": (view("ann"),), "n2": (view("ann"),)},
        converged_after_s=0.4,
    )


def invariants(history: History) -> dict[str, int]:
    return {k: v for k, v in count(check(history)).items() if v}


def test_a_clean_history_has_no_violation() -> None:
    assert check(clean()) == []


def test_i1_two_slots_live_for_a_capacity_one_agent() -> None:
    history = clean()
    slots = (
        SlotEvent("site-a", 10, "ann", 0, True, "c1"),
        SlotEvent("site-a", 12, "ann", 1, True, "c2"),  # a second slot while the first is live
        SlotEvent("site-a", 13, "ann", 0, False),
        SlotEvent("site-a", 14, "ann", 1, False),
    )
    found = check(replace(history, slots=slots, reservations=()))
    assert [v.invariant for v in found] == ["I1"]
    assert "revision 12" in found[0].what
    assert "c1, c2" in found[0].what


def test_i1_a_capacity_two_agent_may_hold_two_slots() -> None:
    slots = (
        SlotEvent("site-a", 10, "ann", 0, True, "c1"),
        SlotEvent("site-a", 12, "ann", 1, True, "c2"),
        SlotEvent("site-a", 13, "ann", 0, False),
        SlotEvent("site-a", 14, "ann", 1, False),
    )
    assert check(replace(clean(), slots=slots, reservations=(), capacities={"ann": 2})) == []


def test_i1_a_logged_reservation_without_its_slot_key() -> None:
    history = clean()
    ghost = ReservationEntry("n3", "reserve", "ann", "c9", 2, 99, 1_600)
    found = check(replace(history, reservations=(*history.reservations, ghost)))
    assert invariants(replace(history, reservations=(*history.reservations, ghost))) == {"I1": 1}
    assert "n3" in found[0].what
    assert "c9" in found[0].what


def test_i1_one_agent_talking_on_two_calls_of_different_owners() -> None:
    history = clean()
    legs = (leg("c1", "ann", 1_100, 1_600), leg("c2", "ann", 1_500, 1_900))
    assert invariants(replace(history, legs=legs)) == {"I1": 1}


def test_i1_a_leg_closed_as_failed_on_restart_does_not_count() -> None:
    history = clean()
    legs = (leg("c1", "ann", 1_100, 9_000, result="failed"), leg("c2", "ann", 1_500, 1_900))
    assert check(replace(history, legs=legs)) == []


def test_i2_a_call_bridged_to_two_agents() -> None:
    history = clean()
    legs = (
        leg("c1", "ann", 1_100, 1_500),
        leg("c1", "bob", 1_200, 1_400, seq=2),
    )
    found = check(replace(history, legs=legs))
    assert [v.invariant for v in found] == ["I2"]
    assert found[0].subject == "c1"


def test_i2_a_consultation_is_explicit() -> None:
    history = clean()
    legs = (
        leg("c1", "ann", 1_100, 1_500),
        leg("c1", "bob", 1_200, 1_400, seq=2, kind="consult"),
    )
    assert check(replace(history, legs=legs)) == []


def test_i3_a_lost_call() -> None:
    history = clean()
    placed = (*history.placed, Placed("c3", "n2", 3_000))
    found = check(replace(history, placed=placed))
    assert [(v.invariant, v.subject) for v in found] == [("I3", "c3")]


def test_i3_a_call_without_outcome_twice_recorded_or_failed_without_reason() -> None:
    history = clean()
    cases = [
        (record("c1", outcome=None), record("c2", outcome="failed", reason="x")),
        (record("c1"), record("c1", node="n2"), record("c2", outcome="failed", reason="x")),
        (record("c1"), record("c2", outcome="failed")),
        (record("c1", outcome="lost"), record("c2", outcome="failed", reason="x")),
    ]
    for records in cases:
        assert invariants(replace(history, records=records)) == {"I3": 1}, records


def test_i4_registries_differ_or_converge_late() -> None:
    history = clean()
    views = {"n1": (view("ann"),), "n2": (view("ann", state="not-ready"),)}
    found = check(replace(history, final_views=views))
    assert [(v.invariant, v.subject) for v in found] == [("I4", "n2")]
    assert invariants(replace(history, converged_after_s=None)) == {"I4": 1}
    late = check(replace(history, converged_after_s=12.5, registry_bound_s=10.0))
    assert [(v.invariant, v.subject) for v in late] == [("I4", "registry")]
    assert "12.5 s after the last heal (bound 10 s)" in late[0].what
    assert check(replace(history, converged_after_s=10.0, registry_bound_s=10.0)) == []
    missing = {"n1": (view("ann"),), "n2": ()}
    assert invariants(replace(history, final_views=missing)) == {"I4": 1}


def test_end_an_agent_left_talking_or_a_slot_left_in_etcd() -> None:
    history = clean()
    views = {"n1": (view("ann", "talking", 1),), "n2": (view("ann", "talking", 1),)}
    assert invariants(replace(history, final_views=views)) == {"END": 1}
    slots = history.slots[:-1]  # c2's slot never deleted
    found = check(replace(history, slots=slots))
    assert [(v.invariant, v.subject) for v in found] == [("END", "ann")]
    assert "c2" in found[0].what


def test_i1_a_node_that_reserved_an_agent_twice_in_one_session() -> None:
    """Seed 12's bug: a stale release freed the slot (so etcd never showed two live slots), and
    the node reserved the agent again while the first call was still on."""
    history = clean()
    log = (
        ReservationEntry("n2", "start", "", "", 0, 0, 900),
        ReservationEntry("n2", "reserve", "ann", "c1", 3, 10, 1_050),
        ReservationEntry("n2", "release", "ann", "c0", 2, 0, 1_060),  # an older session's offer
        ReservationEntry("n2", "reserve", "ann", "c2", 3, 12, 1_070),
    )
    found = check(replace(history, reservations=log))
    assert [(v.invariant, v.subject) for v in found] == [("I1", "ann")]
    assert "c1, c2" in found[0].what
    restarted = (*log[:2], ReservationEntry("n2", "start", "", "", 0, 0, 1_060), log[3])
    assert check(replace(history, reservations=restarted)) == []  # a restart forgets offers
