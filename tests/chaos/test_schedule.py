"""Fault schedules: replayable from the seed, every kind drawn, no two faults on one target at
once, all within the run."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.schedule import KINDS, CutLink, PauseNode, Topology, plan

TOPOLOGY = Topology(
    (
        ("site-a", ("site-a-n1", "site-a-n2")),
        ("site-b", ("site-b-n1", "site-b-n2")),
        ("partner-c", ("partner-c-n1",)),
    )
)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert plan(7, TOPOLOGY, 60) == plan(7, TOPOLOGY, 60)
    assert plan(7, TOPOLOGY, 60) != plan(8, TOPOLOGY, 60)
    assert "seed=7" in plan(7, TOPOLOGY, 60).describe()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), duration=st.floats(20, 300), count=st.integers(1, 20))
def test_faults_fit_the_run_and_never_overlap_on_a_target(
    seed: int, duration: float, count: int
) -> None:
    schedule = plan(seed, TOPOLOGY, duration, faults=count)
    assert 1 <= len(schedule.faults) <= count
    by_target: dict[str, list[tuple[float, float]]] = {}
    for fault in schedule.faults:
        assert fault.at_s >= 3.0
        assert fault.at_s + fault.for_s <= duration - 2.0 + 1e-6
        by_target.setdefault(fault.target, []).append((fault.at_s, fault.at_s + fault.for_s))
    for windows in by_target.values():
        windows.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(windows))
    if count >= len(KINDS) and duration >= 60:
        assert {type(f) for f in schedule.faults} == set(KINDS)


def test_pauses_outlast_the_lease_and_cuts_join_two_different_sites() -> None:
    faults = plan(3, TOPOLOGY, 300, faults=40).faults
    pauses = [f for f in faults if isinstance(f, PauseNode)]
    cuts = [f for f in faults if isinstance(f, CutLink)]
    assert pauses
    assert cuts
    assert all(p.for_s > 2.0 for p in pauses)
    assert all(c.sites[0] < c.sites[1] for c in cuts)


def test_a_run_too_short_for_faults_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        plan(1, TOPOLOGY, 4)
