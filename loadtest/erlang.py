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

Both assume an exponential handle time (squared coefficient of variation Cs^2 = 1). The load
test's agents are busy for a ring (constant) + a talk (exponential or lognormal) + a wrap-up
(constant), which varies less; `general_prediction` corrects for that (M/G/N and M/G/N+M), see
its docstring.
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


def handle_scv(talk_variance_s2: float, handle_s: float) -> float:
    """The squared coefficient of variation Cs^2 = Var(S) / E[S]^2 of the busy time per call S =
    ring + talk + wrap-up: the ring and the wrap-up are constant, so only the talk varies, and
    they lengthen the mean `handle_s`."""
    if not (math.isfinite(handle_s) and handle_s > 0):
        raise ValueError(f"handle_s must be a positive number of seconds, got {handle_s!r}")
    if not (math.isfinite(talk_variance_s2) and talk_variance_s2 >= 0):
        raise ValueError(f"talk_variance_s2 must be at least 0, got {talk_variance_s2!r}")
    return talk_variance_s2 / handle_s**2


def talk_variance(kind: str, mean_s: float, sigma: float = 0.0) -> float:
    """Var of a talk time: exponential (mean^2), lognormal with the log's deviation `sigma` and
    mean `mean_s` (mean^2 (e^{sigma^2} - 1)), constant (0)."""
    if kind == "exponential":
        return mean_s**2
    if kind == "lognormal":
        return mean_s**2 * math.expm1(sigma**2)
    if kind == "constant":
        return 0.0
    raise ValueError(f"talk distribution must be exponential, lognormal or constant, got {kind!r}")


def general_prediction(
    rate: float,
    handle_s: float,
    agents: int,
    threshold_s: float,
    patience_s: float | None,
    scv: float,
) -> Prediction:
    """Erlang C / Erlang A corrected for a handle time whose Cs^2 = Var(S)/E[S]^2 is `scv`
    (M/G/N, M/G/N+M), Poisson arrivals. With scv = 1 it is `predict` exactly.

    Erlang C (no abandonment), the Allen-Cunneen / Kingman heavy-traffic form: the probability
    of waiting stays Erlang C's C(N, A) and the conditional wait stays exponential, its mean
    scaled by z = (Ca^2 + Cs^2) / 2 = (1 + Cs^2) / 2:

        P(W > t) ~= C(N, A) * exp(-(N - A) * t / E[S] / z),   ASA ~= z * C(N, A) E[S] / (N - A).

    Sources: Kingman (1961/62) for one server; Koellerstroem, "Heavy traffic theory for queues
    with several servers. I", J. Appl. Prob. 11 (1974): in heavy traffic the GI/G/s wait is
    exponential with mean (Ca^2 + Cs^2)/2 * E[S]/(s - A); Allen, "Probability, Statistics and
    Queueing Theory" (2nd ed., 1990), the Allen-Cunneen approximation Wq(M/G/c) ~= Wq(M/M/c) *
    (1 + Cs^2)/2; Whitt, "Approximations for the GI/G/m queue", Production and Operations
    Management 2 (1993), which uses the same z for the conditional wait. Why C(N, A) stays: in
    a diffusion picture of the number in system (in the spirit of Whitt, "A diffusion
    approximation for the G/GI/n/m queue", Oper. Res. 52, 2004), take below N the variance per
    unit time of the infinite-server queue (2 lambda: its stationary law is Poisson whatever the
    service distribution) and above N lambda (1 + Cs^2) = 2 lambda z; the stationary density
    jumps at N by 1/z (p * sigma^2 is continuous) while the queue's exponential tail lengthens
    by z, so the mass above N, P(wait), does not depend on z. That is a heuristic: the exact
    many-server limits for non-exponential service (Puhalskii and Reiman 2000; Jelenkovic,
    Mandelbaum and Momcilovic 2004 for M/D/N) do change P(wait) a little. The simulations in
    tests/loadtest/test_erlang.py measure the error: within 1.5 points at 20 agents without
    abandonment, 2 with (longer simulations at the load test's 300 agents and 21 calls/s, with a
    20 s or 60 s patience: within half a point).

    Erlang A (abandonment, exponential patience of rate theta = 1/patience_s): the same
    diffusion above N has drift lambda - N mu - theta q and variance 2 lambda z. Scaling the queue
    by z and time by z (q = z u, t = z s) turns it into the M/M/N+M diffusion with abandonment
    rate z theta, whose mass above N it also has; a caller's wait is z times the wait in
    that model, and it survives its own patience with the same probability (e^{-theta z V} =
    e^{-(z theta) V}). So the M/G/N+M is read off Erlang A with mean patience patience_s / z at
    the threshold T / z: service level SL_A'(T / z), ASA z * ASA_A', the same abandonment and
    P(wait). With no abandonment this is the Erlang C form above. This part is our derivation
    in the spirit of the sources (a heuristic, not a published formula), exact at z = 1. A lower
    Cs^2 lowers the abandonment and, in a queue stable without abandonment, raises the service
    level at any T of at least h / (N - A); at T near 0 it can lower it a little (shorter queues
    lose fewer callers to abandonment, so slightly more of them wait).

    Both are heavy-traffic approximations: best near full occupancy with many agents (the load
    test's regime), rougher at light load, where waits are rare anyway.
    """
    if not (math.isfinite(scv) and scv >= 0):
        raise ValueError(f"scv must be a squared coefficient of variation >= 0, got {scv!r}")
    _check(rate, handle_s, agents, threshold_s)
    z = (1.0 + scv) / 2.0
    if patience_s is None:
        base = erlang_c_prediction(rate, handle_s, agents, threshold_s / z)
    else:
        if not (math.isfinite(patience_s) and patience_s > 0):
            raise ValueError(f"patience_s must be a positive number of seconds, got {patience_s!r}")
        base = erlang_a_prediction(rate, handle_s, agents, threshold_s / z, patience_s / z)
    return Prediction(
        base.wait_probability,
        base.service_level,
        base.asa_s * z,
        base.abandonment,
        base.occupancy,
    )
