from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.clock import COUNTER_BITS, HybridClock, millis, pack
from registry.errors import ClockSkew


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_timestamps_follow_physical_time() -> None:
    physical = FakeClock(1_000)
    clock = HybridClock(physical)
    assert clock.now() == pack(1_000, 0)
    assert clock.now() == pack(1_000, 1)
    physical.ms = 2_000
    assert clock.now() == pack(2_000, 0)


def test_counter_overflow_carries_into_milliseconds() -> None:
    clock = HybridClock(FakeClock(5))
    clock.observe(pack(5, (1 << COUNTER_BITS) - 1))
    assert clock.now() == pack(6, 0)


# Steps: ("tick", ms) moves the physical clock (possibly backwards), ("now",) issues a timestamp,
# ("observe", offset) takes in a remote timestamp near the physical clock.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-5_000, 5_000)),
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("observe"), st.integers(-10_000, 2_000)),
    ),
    max_size=60,
)


@given(steps)
def test_local_timestamps_strictly_increase(script: list[tuple[str, int]]) -> None:
    physical = FakeClock(1_000_000)
    clock = HybridClock(physical, max_ahead_ms=500)
    issued: list[int] = []
    observed = 0
    for op, value in script:
        if op == "tick":
            physical.ms = max(0, physical.ms + value)
        elif op == "now":
            stamp = clock.now()
            assert stamp > observed
            assert not issued or stamp > issued[-1]
            assert millis(stamp) >= physical.ms
            issued.append(stamp)
        else:
            remote = pack(max(0, physical.ms + value), 7)
            try:
                clock.observe(remote)
            except ClockSkew:
                assert value > 500
            else:
                observed = max(observed, remote)


def test_remote_timestamp_too_far_ahead_is_refused_and_counted() -> None:
    clock = HybridClock(FakeClock(10_000), max_ahead_ms=500)
    clock.observe(pack(10_500))
    with pytest.raises(ClockSkew, match="more than 500 ms ahead"):
        clock.observe(pack(10_501))
    assert clock.refused == 1
    assert clock.last == pack(10_500)


def test_negative_bound_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_ahead_ms"):
        HybridClock(max_ahead_ms=-1)
