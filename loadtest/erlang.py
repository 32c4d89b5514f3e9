"""The queueing yardstick: Erlang C (callers wait forever) and Erlang A (callers with exponential
patience abandon) for one pooled queue of `agents` identical agents. Pure functions.

Inputs: `rate` calls per second (Poisson), `handle_s` the mean handle time (exponential; what an
agent is busy per call: ring, talk and wrap-up), `agents` the number of agents, `patience_s` the
callers' mean patience (Erlang A), `threshold_s` the service level's T.

Erlang C uses the Erlang B recursion (B(0) = 1, B(n) = A B(n-1) / (n + A B(n-1))), which stays
in [0, 1] and never overflows. Erlang A (M/M/N+M) uses the birth-death chain's stationary
distribution in log space, and the tagged caller's waiting time: with j callers ahead it moves up
at rate N/h + j/patience, so its offered wait V is a sum of exponentials, whose distribution at
T comes from uniformization. A caller is answered when its patience outlasts V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TAIL = 1e-13
"""Probability mass left out when a distribution is truncated."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the model predicts for one pooled queue."""

    wait_probability: float
    """P(a caller waits at all): Erlang C's C, or Erlang A's P(all agents busy on arrival)."""
    service_level: float
    """Answered within T / (answered + abandoned after T); Erlang C: P(wait <= T)."""
    asa_s: float
    """Average speed of answer: the mean wait of answered callers, in seconds."""
    abandonment: float
    """The share of callers who hang up before an agent answers (0 for Erlang C)."""
    occupancy: float
    """The share of agent time spent on calls: carried traffic / agents."""


def _check(rate: float, handle_s: float, agents: int, threshold_s: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of calls per second, got {rate!r}")
    if not (math.isfinite(handle_s) and handle_s > 0):
        raise ValueError(f"handle_s must be a positive number of seconds, got {handle_s!r}")
    if type(agents) is not int or agents < 1:
        raise ValueError(f"agents must be a positive integer, got {agents!r}")
    if not (math.isfinite(threshold_s) and threshold_s >= 0):
        raise ValueError(f"threshold_s must be at least 0 seconds, got {threshold_s!r}")


def erlang_b(traffic: float, agents: int) -> float:
    """Blocking probability of `agents` servers offered `traffic` erlangs (the recursion)."""
    b = 1.0
    for n in range(1, agents + 1):
        b = traffic * b / (n + traffic * b)
    return b


def erlang_c(traffic: float, agents: int) -> float:
    """P(wait > 0) for `agents` agents offered `traffic` erlangs; 1 when traffic >= agents."""
    if traffic >= agents:
        return 1.0
    b = erlang_b(traffic, agents)
    return agents * b / (agents - traffic * (1 - b))


def erlang_c_prediction(
    rate: float, handle_s: float, agents: int, threshold_s: float
) -> Prediction:
    """Erlang C (M/M/N): callers never abandon. An overloaded queue (traffic >= agents) has no
    steady state: service level 0, ASA infinite."""
    _check(rate, handle_s, agents, threshold_s)
    traffic = rate * handle_s
    c = erlang_c(traffic, agents)
    if traffic >= agents:
        return Prediction(1.0, 0.0, math.inf, 0.0, 1.0)
    gap = (agents - traffic) / handle_s  # the rate at which a waiting caller's wait ends
    service_level = 1.0 - c * math.exp(-gap * threshold_s)
    return Prediction(c, service_level, c / gap, 0.0, traffic / agents)


def _log_stationary(rate: float, handle_s: float, agents: int, patience_s: float) -> list[float]:
    """log P(n callers in the system), n = 0..K, for M/M/N+M, truncated at a negligible tail."""
    mu, theta = 1.0 / handle_s, 1.0 / patience_s
    logs = [0.0]
    n = 0
    while True:
        n += 1
        death = min(n, agents) * mu + max(n - agents, 0) * theta
        logs.append(logs[-1] + math.log(rate / death))
        # beyond the agents the chain's ratio rate/death keeps falling: stop once small
        if n > agents and death > rate and logs[-1] - max(logs) < math.log(TAIL):
            break
    top = max(logs)
    total = math.fsum(math.exp(x - top) for x in logs)
    return [x - top - math.log(total) for x in logs]


def _served_by(ahead: list[float], rates: list[float], kill: float, horizon_s: float) -> float:
    """P(absorbed through the head of the queue by `horizon_s`) for a pure-death chain started
    with `ahead[j]` mass at j callers ahead, moving j -> j-1 at rates[j] (0 -> served at rates[0])
    and killed at rate `kill` everywhere (uniformization)."""
    if horizon_s <= 0 or not ahead:
        return 0.0
    top = max(rates) + kill
    steps = top * horizon_s
    last = int(steps + 12 * math.sqrt(steps) + 30)
    mass = list(ahead)
    served = 0.0
    total = 0.0
    log_weight = -steps  # log Poisson(0; steps)
    for n in range(last + 1):
        total += math.exp(log_weight) * served
        # one uniformized jump
        served += mass[0] * rates[0] / top
        moved = [m * r / top for m, r in zip(mass, rates, strict=True)]
        stay = [m * (1 - (r + kill) / top) for m, r in zip(mass, rates, strict=True)]
        mass = [stay[j] + (moved[j + 1] if j + 1 < len(mass) else 0.0) for j in range(len(mass))]
        log_weight += math.log(steps) - math.log(n + 1)
    # beyond `last` jumps the Poisson weights are negligible: what is served by then stays served
    return min(1.0, total + served * max(0.0, 1.0 - _poisson_cdf(last, steps)))


def _poisson_cdf(last: int, mean: float) -> float:
    log_weight, total = -mean, 0.0
    for n in range(last + 1):
        total += math.exp(log_weight)
        log_weight += math.log(mean) - math.log(n + 1)
    return min(1.0, total)


def erlang_a_prediction(
    rate: float, handle_s: float, agents: int, threshold_s: float, patience_s: float
) -> Prediction:
    """Erlang A (M/M/N+M): callers abandon after an exponential patience of mean `patience_s`.
    Stable at any load, since abandonment bounds the queue."""
    _check(rate, handle_s, agents, threshold_s)
    if not (math.isfinite(patience_s) and patience_s > 0):
        raise ValueError(f"patience_s must be a positive number of seconds, got {patience_s!r}")
    mu, theta = 1.0 / handle_s, 1.0 / patience_s
    logs = _log_stationary(rate, handle_s, agents, patience_s)
    probs = [math.exp(x) for x in logs]
    no_wait = math.fsum(probs[:agents])
    ahead = probs[agents:]  # an arrival finding N + j in the system has j callers ahead (PASTA)
    wait = math.fsum(ahead)
    rates = [agents * mu + j * theta for j in range(len(ahead))]
    # from j ahead: E[e^{-theta V}] = prod r_i / (r_i + theta) over i <= j, and
    # E[V e^{-theta V}] = that times sum 1 / (r_i + theta)
    answered_waiting = 0.0
    waited_answered = 0.0
    survive, inverse = 1.0, 0.0
    for j, mass in enumerate(ahead):
        survive *= rates[j] / (rates[j] + theta)
        inverse += 1.0 / (rates[j] + theta)
        answered_waiting += mass * survive
        waited_answered += mass * survive * inverse
    served_in_time = _served_by(ahead, rates, theta, threshold_s)  # E[e^{-theta V}; V <= T]
    reached = _served_by(ahead, rates, 0.0, threshold_s)  # P(V <= T), patience aside
    answered = no_wait + answered_waiting
    within = no_wait + served_in_time
    # abandoned after T: patience in (T, V): E[(e^{-theta T} - e^{-theta V}); V > T]
    late_abandon = math.exp(-theta * threshold_s) * (wait - reached) - (
        answered_waiting - served_in_time
    )
    late_abandon = max(0.0, late_abandon)
    service_level = within / (answered + late_abandon) if answered + late_abandon > 0 else 1.0
    asa = waited_answered / answered if answered > 0 else math.inf
    carried = rate * answered * handle_s
    return Prediction(
        wait,
        min(1.0, max(0.0, service_level)),
        asa,
        max(0.0, 1.0 - answered),
        min(1.0, carried / agents),
    )


def predict(
    rate: float, handle_s: float, agents: int, threshold_s: float, patience_s: float | None
) -> Prediction:
    """Erlang A when callers abandon (`patience_s`), Erlang C when they wait forever."""
    if patience_s is None:
        return erlang_c_prediction(rate, handle_s, agents, threshold_s)
    return erlang_a_prediction(rate, handle_s, agents, threshold_s, patience_s)
