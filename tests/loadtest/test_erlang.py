"""Erlang C and Erlang A against textbook values, a simulation, and the laws they obey; their
correction for a handle time that varies less (or more) than the exponential (M/G/N, M/G/N+M)."""

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
    general_prediction,
    handle_scv,
    predict,
    talk_variance,
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
    rate: float,
    handle: float,
    agents: int,
    threshold: float,
    patience: float | None,
    constant: float = 0.0,
) -> dict[str, float]:
    """M/G/N+M by simulation, first come first served (seeded): the handle time is `constant`
    plus an exponential of mean handle - constant (M/M/N+M with constant 0); no patience: M/G/N."""
    rng = random.Random(7)
    free_at = [0.0] * agents
    t = 0.0
    answered = within = abandoned = late = 0
    waits = 0.0
    for _ in range(200_000):
        t += rng.expovariate(rate)
        patience_s = rng.expovariate(1 / patience) if patience is not None else math.inf
        start = max(t, free_at[0])
        if start - t > patience_s:
            abandoned += 1
            late += patience_s > threshold
            continue
        talk = rng.expovariate(1 / (handle - constant))
        heapq.heapreplace(free_at, start + constant + talk)
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


# -- the correction for the handle time's variability (M/G/N, M/G/N+M) --------------------------


@pytest.mark.parametrize("patience", [None, 30.0])
@pytest.mark.parametrize(
    ("rate", "agents", "threshold"), [(1.8, 20, 2.0), (1.85, 20, 1.0), (4.6, 20, 0.5)]
)
def test_correction_matches_a_simulation(
    rate: float, agents: int, threshold: float, patience: float | None
) -> None:
    """Half of every busy time constant (Cs^2 = 0.25). Without abandonment plain Erlang C is 4-7
    points too low and the correction within 1.5 points; with abandonment (patience 3-8 handle
    times, 20 agents) plain Erlang A is 1-2 points low and the correction 1-2 points high: the
    scaling of abandonment is a heavy-traffic argument, rougher at 20 agents than at 300."""
    handle, constant = 10.0 if rate < 2 else 4.0, 5.0 if rate < 2 else 2.0
    scv = handle_scv(talk_variance("exponential", handle - constant), handle)
    assert scv == pytest.approx(0.25)
    simulated = simulate(rate, handle, agents, threshold, patience, constant)
    corrected = general_prediction(rate, handle, agents, threshold, patience, scv)
    plain = predict(rate, handle, agents, threshold, patience)
    gap = abs(corrected.service_level - simulated["service_level"])
    assert gap <= 0.025
    if patience is None:
        assert gap < abs(plain.service_level - simulated["service_level"]) / 2
    assert corrected.asa_s == pytest.approx(simulated["asa_s"], rel=0.2)
    assert corrected.abandonment == pytest.approx(simulated["abandonment"], abs=0.005)


def test_correction_is_the_allen_cunneen_tail() -> None:
    """Without abandonment: P(W > t) = C(N, A) exp(-(N - A) t / h * 2 / (1 + Cs^2))."""
    rate, handle, agents, t, scv = 21.0, 13.5, 300, 0.7, 0.8
    traffic = rate * handle
    tail = erlang_c(traffic, agents) * math.exp(-(agents - traffic) * t / handle * 2 / (1 + scv))
    corrected = general_prediction(rate, handle, agents, t, None, scv)
    assert corrected.service_level == pytest.approx(1 - tail, abs=1e-12)
    plain = erlang_c_prediction(rate, handle, agents, t)
    assert corrected.wait_probability == plain.wait_probability
    assert corrected.asa_s == pytest.approx(plain.asa_s * (1 + scv) / 2)


def test_variances_of_the_talk_times() -> None:
    assert talk_variance("exponential", 12.0) == 144.0
    assert talk_variance("constant", 12.0) == 0.0
    rng = random.Random(5)
    mean, sigma = 10.0, 0.8
    mu = math.log(mean) - sigma**2 / 2
    samples = [rng.lognormvariate(mu, sigma) for _ in range(100_000)]
    sample_mean = math.fsum(samples) / len(samples)
    sample_var = math.fsum((x - sample_mean) ** 2 for x in samples) / len(samples)
    assert talk_variance("lognormal", mean, sigma) == pytest.approx(sample_var, rel=0.05)
    # ring 0.3 s + talk (exponential, 12.2 s) + wrap-up 1 s: Cs^2 = 12.2^2 / 13.5^2
    assert handle_scv(talk_variance("exponential", 12.2), 13.5) == pytest.approx(0.8167, abs=1e-4)
    with pytest.raises(ValueError, match="talk distribution"):
        talk_variance("uniform", 1.0)
    with pytest.raises(ValueError, match="talk_variance_s2"):
        handle_scv(-1.0, 10.0)
    with pytest.raises(ValueError, match="scv"):
        general_prediction(1, 10, 12, 20, None, -0.5)
    with pytest.raises(ValueError, match="patience_s"):
        general_prediction(1, 10, 12, 20, 0.0, 0.5)


scvs = st.floats(0.0, 3.0)
maybe_patience = st.none() | patiences


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, thresholds, maybe_patience)
def test_correction_with_exponential_handle_times_is_plain_erlang(
    rate: float, handle: float, agents: int, threshold: float, patience: float | None
) -> None:
    """Cs^2 = 1 gives plain Erlang C (no patience) and plain Erlang A, exactly."""
    assert general_prediction(rate, handle, agents, threshold, patience, 1.0) == predict(
        rate, handle, agents, threshold, patience
    )


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, thresholds, maybe_patience, scvs)
def test_correction_is_monotone_in_t(
    rate: float, handle: float, agents: int, threshold: float, patience: float | None, scv: float
) -> None:
    now = general_prediction(rate, handle, agents, threshold, patience, scv)
    later = general_prediction(rate, handle, agents, threshold + 1.0, patience, scv)
    assert 0 <= now.service_level <= later.service_level + 1e-9 <= 1 + 1e-9


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, thresholds, scvs, scvs)
def test_less_variable_handle_times_serve_sooner(
    rate: float, handle: float, agents: int, threshold: float, one: float, other: float
) -> None:
    """Erlang C form: a lower Cs^2 never lowers the service level, nor raises the ASA."""
    low, high = sorted((one, other))
    better = general_prediction(rate, handle, agents, threshold, None, low)
    worse = general_prediction(rate, handle, agents, threshold, None, high)
    assert better.service_level >= worse.service_level - 1e-12
    assert better.asa_s <= worse.asa_s or math.isinf(worse.asa_s)


@settings(max_examples=60, deadline=None)
@given(rates, handles, agent_counts, st.floats(0.0, 1.0), patiences, scvs, scvs)
def test_less_variable_handle_times_with_abandonment(
    rate: float,
    handle: float,
    agents: int,
    beyond: float,
    patience: float,
    one: float,
    other: float,
) -> None:
    """Erlang A form: a lower Cs^2 never raises the abandonment; in a queue stable without
    abandonment, it never lowers the service level at a T of at least the mean wait of those
    who wait (h / (N - A)). (At T near 0 it can: shorter queues lose fewer callers to
    abandonment, so slightly more of them wait.)"""
    low, high = sorted((one, other))
    better = general_prediction(rate, handle, agents, 0.0, patience, low)
    worse = general_prediction(rate, handle, agents, 0.0, patience, high)
    assert better.abandonment <= worse.abandonment + 1e-9
    traffic = rate * handle
    if traffic < 0.98 * agents:
        threshold = handle / (agents - traffic) * (1 + 10 * beyond)
        better = general_prediction(rate, handle, agents, threshold, patience, low)
        worse = general_prediction(rate, handle, agents, threshold, patience, high)
        assert better.service_level >= worse.service_level - 1e-9
