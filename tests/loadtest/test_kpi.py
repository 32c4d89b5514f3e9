"""The load test's figures from records, legs and metrics (pure)."""

from __future__ import annotations

import pytest

from loadtest.kpi import (
    CallRow,
    Leg,
    call_figures,
    double_bookings,
    histogram,
    lost_calls,
    metric_delta,
    occupancy,
    parse_metrics,
    total,
)


def row(call_id: str, arrived: int, answered: int, ended: int, outcome: str | None) -> CallRow:
    return CallRow(call_id, "n1", arrived, answered, ended, answered, outcome, "n2")


def test_service_level_counts_late_abandons_only() -> None:
    rows = [
        row("a", 0, 1_000, 5_000, "completed"),  # answered in 1 s
        row("b", 0, 9_000, 12_000, "completed"),  # answered in 9 s: late
        row("c", 0, 0, 2_000, "abandoned"),  # abandoned within T: not counted
        row("d", 0, 0, 7_000, "abandoned"),  # abandoned after T: counts against
    ]
    figures = call_figures(rows, threshold_s=5)
    assert figures.offered == 4
    assert figures.answered == 2
    assert figures.abandoned == 2
    assert figures.service_level == pytest.approx(1 / 3)
    assert figures.asa_s == pytest.approx(5.0)
    assert figures.abandonment == pytest.approx(0.5)
    assert figures.longest_wait_s == pytest.approx(9.0)
    assert figures.talk_s == pytest.approx(3.5)
    assert call_figures([], 5).service_level is None


def test_lost_calls_need_exactly_one_outcome() -> None:
    rows = {
        "n1": [row("a", 0, 1, 2, "completed"), row("b", 0, 0, 0, None)],
        "n2": [row("c", 0, 1, 2, "completed"), row("a", 0, 1, 2, "completed")],
    }
    # a: two outcomes; b: none; c: fine; d: accepted but never recorded
    assert lost_calls(["a", "b", "c", "d"], rows) == ["a", "b", "d"]


def test_double_bookings_are_overlapping_legs_of_one_agent() -> None:
    legs = [
        Leg("c1", "x", 0, 100, 1_000, "agent"),
        Leg("c2", "x", 1_000, 1_100, 2_000, "agent"),  # back to back: fine
        Leg("c3", "y", 0, 100, 5_000, "agent"),
        Leg("c4", "y", 4_000, 4_100, 6_000, "agent"),  # overlaps c3
        Leg("c5", "z", 0, 0, 0, "agent"),  # an offer still open at the end, never answered
        Leg("c6", "z", 3_000, 0, 3_500, "agent"),  # another offer while it rings
        Leg("c7", "w", 0, 100, 0, "agent"),  # answered, never ended
        Leg("c8", "w", 2_000, 2_100, 3_000, "agent"),
    ]
    talking = [("w", "c7", "c8"), ("y", "c3", "c4")]
    assert double_bookings(legs, now_ms=10_000) == talking
    assert double_bookings(legs, now_ms=10_000, offers=True) == [*talking, ("z", "c5", "c6")]


def test_occupancy_clips_to_the_window() -> None:
    busy = [("x", 0.0, 10.0), ("y", 5.0, 15.0), ("x", 18.0, 30.0)]
    assert occupancy(busy, 2, 5.0, 20.0) == pytest.approx((5 + 10 + 2) / 30)
    assert occupancy(busy, 0, 5.0, 20.0) is None
    # one agent's overlapping spans count once
    assert occupancy([("x", 0.0, 10.0), ("x", 8.0, 12.0)], 1, 0.0, 20.0) == pytest.approx(0.6)


EXPOSITION = """# HELP callmesh_routing_decision_seconds Time to rank
# TYPE callmesh_routing_decision_seconds histogram
callmesh_routing_decision_seconds_bucket{le="0.001",site="a"} 50.0
callmesh_routing_decision_seconds_bucket{le="0.01",site="a"} 90.0
callmesh_routing_decision_seconds_bucket{le="+Inf",site="a"} 100.0
callmesh_routing_decision_seconds_count{site="a"} 100.0
callmesh_routing_decision_seconds_sum{site="a"} 0.2
callmesh_offers_total{result="refused",site="a",tier="1"} 3.0
callmesh_offers_total{result="accepted",site="a",tier="1"} 97.0
"""


def test_metrics_histogram_and_counters() -> None:
    before = parse_metrics(EXPOSITION.replace("97.0", "90.0"))
    after = parse_metrics(EXPOSITION)
    assert total(after, "callmesh_offers_total", result="refused") == 3
    assert total(metric_delta(before, after), "callmesh_offers_total") == 7
    figures = histogram(after, "callmesh_routing_decision_seconds")
    assert figures["count"] == 100
    assert figures["mean_ms"] == pytest.approx(2.0)
    assert figures["p50_ms"] == pytest.approx(1.0)
    assert figures["p99_ms"] == pytest.approx(10.0)
    assert histogram({}, "callmesh_routing_decision_seconds")["mean_ms"] is None


def test_arrival_to_first_offer() -> None:
    from loadtest.kpi import arrival_to_offer_ms

    rows = [row("a", 1_000, 3_000, 9_000, "completed"), row("b", 0, 0, 500, "abandoned")]
    legs = [
        Leg("a", "x", 2_500, 0, 2_600, "agent"),  # missed: the first offer still counts
        Leg("a", "y", 2_800, 3_000, 9_000, "agent"),
        Leg("a", "z", 1_100, 0, 1_200, "consult"),  # not an offer of the call
    ]
    assert arrival_to_offer_ms(rows, legs) == [1_500.0]
