"""Erlang C and Erlang A against textbook values, a simulation, and the laws they obey."""

from __future__ import annotations

import heapq
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.erlang import (
    erlang_a_prediction,
    erlang_b,
    erlang_c,
    erlang_c_prediction,
    predict,
)


def test_erlang_b_textbook() -> None:
    # 10 erlangs on 10 circuits block 21.5 %; 5 erlangs on 10 circuits 1.84 %
    assert erlang_b(10, 10) == pytest.approx(0.2146, abs=1e-4)
    assert erlang_b(5, 10) == pytest.approx(0.01838, abs=1e-5)


def test_erlang_c_textbook() -> None:
    # the classic example: 100 calls in 30 min, 180 s handle time, T = 20 s
    rate = 100 / 1800
    eleven = erlang_c_prediction(rate, 180, 11, 20)
    assert eleven.wait_probability == pytest.approx(0.6821, abs=1e-4)
    assert eleven.service_level == pytest.approx(0.3896, abs=1e-4)
    assert eleven.asa_s == pytest.approx(122.78, abs=0.01)
    fourteen = erlang_c_prediction(rate, 180, 14, 20)
    assert fourteen.wait_probability == pytest.approx(0.1741, abs=1e-4)
    assert fourteen.service_level == pytest.approx(0.8884, abs=1e-4)
    assert fourteen.asa_s == pytest.approx(7.84, abs=0.01)
    assert fourteen.occupancy == pytest.approx(10 / 14)


def test_erlang_c_large_pools_stay_finite() -> None:
    # the recursion never overflows, where A^N / N! would (A = 4000, N = 4100)
    prediction = erlang_c_prediction(100, 40, 4_100, 5)
    assert 0 <= prediction.wait_probability <= 1
    assert 0 <= prediction.service_level <= 1


def test_erlang_c_overload_has_no_steady_state() -> None:
    prediction = erlang_c_prediction(2, 10, 15, 20)
    assert prediction.service_level == 0
    assert math.isinf(prediction.asa_s)


def simulate(
    rate: float, handle: float, agents: int, threshold: float, patience: float
) -> dict[str, float]:
    """M/M/N+M by simulation, first come first served (seeded)."""
    rng = random.Random(7)
    free_at = [0.0] * agents
    t = 0.0
    answered = within = abandoned = late = 0
    waits = 0.0
    for _ in range(200_000):
        t += rng.expovariate(rate)
        patience_s = rng.expovariate(1 / patience)
        start = max(t, free_at[0])
        if start - t > patience_s:
            abandoned += 1
            late += patience_s > threshold
            continue
        heapq.heapreplace(free_at, start + rng.expovariate(1 / handle))
        answered += 1
        waits += start - t
        within += start - t <= threshold
    return {
        "service_level": within / (answered + late),
        "asa_s": waits / answered,
        "abandonment": abandoned / (answered + abandoned),
    }


def test_erlang_a_matches_a_simulation() -> None:
    predicted = erlang_a_prediction(100 / 1800, 180, 11, 20, 120)
    simulated = simulate(100 / 1800, 180, 11, 20, 120)
    assert predicted.service_level == pytest.approx(simulated["service_level"], abs=0.01)
    assert predicted.asa_s == pytest.approx(simulated["asa_s"], rel=0.05)
    assert predicted.abandonment == pytest.approx(simulated["abandonment"], abs=0.005)


def test_erlang_a_tends_to_erlang_c_with_endless_patience() -> None:
    a = erlang_a_prediction(100 / 1800, 180, 11, 20, 1e9)
    c = erlang_c_prediction(100 / 1800, 180, 11, 20)
    assert a.service_level == pytest.approx(c.service_level, abs=1e-5)
    assert a.asa_s == pytest.approx(c.asa_s, rel=1e-4)
    assert a.wait_probability == pytest.approx(c.wait_probability, abs=1e-5)


def test_predict_picks_the_model() -> None:
    assert predict(1, 10, 12, 20, None) == erlang_c_prediction(1, 10, 12, 20)
    assert predict(1, 10, 12, 20, 30) == erlang_a_prediction(1, 10, 12, 20, 30)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 10, 5, 20), "rate"),
        ((1, -1, 5, 20), "handle_s"),
        ((1, 10, 0, 20), "agents"),
        ((1, 10, 5, -1), "threshold_s"),
    ],
)
def test_bad_inputs_name_the_argument(args: tuple[float, float, int, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        erlang_c_prediction(*args)
    with pytest.raises(ValueError, match=field):
        erlang_a_prediction(*args, 60)


rates = st.floats(0.05, 3.0)
handles = st.floats(1.0, 30.0)
agent_counts = st.integers(1, 40)
thresholds = st.floats(0.0, 60.0)
patiences = st.floats(5.0, 300.0)


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, thresholds)
def test_erlang_c_more_agents_never_worse(
    rate: float, handle: float, agents: int, threshold: float
) -> None:
    fewer = erlang_c_prediction(rate, handle, agents, threshold)
    more = erlang_c_prediction(rate, handle, agents + 1, threshold)
    assert 0 <= fewer.service_level <= 1
    assert more.service_level >= fewer.service_level - 1e-12
    assert more.wait_probability <= fewer.wait_probability + 1e-12
    assert erlang_c(rate * handle, agents + 1) <= erlang_c(rate * handle, agents) + 1e-12


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, thresholds, patiences)
def test_erlang_a_laws(
    rate: float, handle: float, agents: int, threshold: float, patience: float
) -> None:
    fewer = erlang_a_prediction(rate, handle, agents, threshold, patience)
    more = erlang_a_prediction(rate, handle, agents + 1, threshold, patience)
    for p in (fewer, more):
        assert 0 <= p.service_level <= 1
        assert 0 <= p.abandonment <= 1
        assert 0 <= p.occupancy <= 1
        assert p.asa_s >= 0
    assert more.service_level >= fewer.service_level - 1e-6
    assert more.abandonment <= fewer.abandonment + 1e-9
    assert more.asa_s <= fewer.asa_s + 1e-9
    # a longer T never lowers the service level
    later = erlang_a_prediction(rate, handle, agents, threshold + 5, patience)
    assert later.service_level >= fewer.service_level - 1e-6


@settings(max_examples=40, deadline=None)
@given(rates, handles, agent_counts, patiences)
def test_erlang_a_abandonment_is_patience_times_queue(
    rate: float, handle: float, agents: int, patience: float
) -> None:
    """Little's law for the queue: abandons per second = mean queue length / patience."""
    from loadtest.erlang import _log_stationary

    p = erlang_a_prediction(rate, handle, agents, 20, patience)
    probs = [math.exp(x) for x in _log_stationary(rate, handle, agents, patience)]
    queue = sum(max(0, n - agents) * q for n, q in enumerate(probs))
    assert p.abandonment == pytest.approx(queue / patience / rate, rel=1e-6, abs=1e-9)
