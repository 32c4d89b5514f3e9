"""The load test's figures, computed from what the nodes recorded and what the clients saw. Pure.

Call figures come from the nodes' call records (GET /records, GET /records/{id} for the legs);
occupancy from the agents' own view (busy from an offer until free again after wrap-up); the
system's latencies from the nodes' Prometheus metrics (before and after the run).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFINITIONS = {
    "offered": "calls accepted by a node (POST /calls answered 201) that arrived in the window",
    "answered": "offered calls an agent answered",
    "abandoned": "offered calls the caller hung up before an agent answered",
    "service_level": "answered within T / (answered + abandoned after T); wait = arrival to answer",
    "asa_s": "average speed of answer: mean wait of answered calls, arrival to answer",
    "aht_s": "average handle time: mean talk (answer to hang-up) plus mean wrap-up",
    "abandonment": "abandoned / offered",
    "occupancy": "agent time busy with calls (offer to free after wrap-up) / logged-in time",
    "longest_wait_s": "longest wait of an answered or abandoned call",
    "routing_decision_ms": "time to rank candidate agents for one call (nodes' histogram)",
    "offer_to_answer_ms": "from the offer (agent reserved) to the agent's answer, ring included",
    "arrival_to_offer_ms": "from the call's arrival to its first offer (the median call met a "
    "free agent: routing, the reservation round trip and the records' writes)",
    "refused_offers": "reservations an agent's home node refused (the agent was no longer free)",
    "cross_site_share": "answered calls whose agent is at another site than the call's owner",
    "lost_calls": "accepted calls without exactly one terminal outcome in the nodes' records",
    "double_bookings": "pairs of one agent's legs in the records during which it talks on both "
    "(answer to end overlap)",
    "overlapping_offers": "pairs of one agent's legs that overlap from the offer on (a ringing "
    "offer its owner has not yet closed counts)",
    "agent_busy_per_call_s": "agent busy time (offer to free) per answered call",
    "agent_busy_per_offer_s": "agent busy time (offer to free) per offer that reached an agent, "
    "answered or given up by its caller while it rang: the model's h",
    "peak_talking_calls": "most accepted calls in talk at once (answer to end in the nodes' "
    "records)",
    "audio_answered": "media mode: calls the load test's agents answered (POST answer 200)",
    "audio_verified": "media mode: answered calls on which, within 10 s of the answer, the caller "
    "heard the agent's tone and the agent the caller's (most of the power of the last 0.4 s "
    "received at the other side's frequency; every caller and agent has its own)",
    "audio_failed": "media mode: answered calls whose audio was not verified both ways (must be 0)",
    "answer_to_verified_s": "media mode: from the answer to both sides hearing each other (the "
    "listener's Opus decoder joins the stream midway and settles within about a second)",
}


@dataclass(frozen=True, slots=True)
class CallRow:
    """One call as its owner recorded it (times in wall-clock ms)."""

    call_id: str
    owner_node: str
    arrived_ms: int
    answered_ms: int
    ended_ms: int
    offered_ms: int
    outcome: str | None
    agent_node: str

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> CallRow:
        return cls(
            str(row["call_id"]),
            str(row["owner_node"]),
            int(row["arrived_ms"]),
            int(row.get("answered_ms") or 0),
            int(row.get("ended_ms") or 0),
            int(row.get("offered_ms") or 0),
            row.get("outcome"),
            str(row.get("agent_node") or ""),
        )


@dataclass(frozen=True, slots=True)
class Leg:
    call_id: str
    agent_id: str
    offered_ms: int
    answered_ms: int
    ended_ms: int
    kind: str


@dataclass(frozen=True, slots=True)
class CallFigures:
    offered: int
    answered: int
    abandoned: int
    other_outcomes: int
    service_level: float | None
    asa_s: float | None
    abandonment: float | None
    longest_wait_s: float
    talk_s: float | None


def _wait_ms(row: CallRow) -> int:
    end = row.answered_ms if row.answered_ms else row.ended_ms
    return max(0, end - row.arrived_ms)


def call_figures(rows: Iterable[CallRow], threshold_s: float) -> CallFigures:
    """Service level, ASA, abandonment and the longest wait of these calls."""
    rows = list(rows)
    answered = [r for r in rows if r.answered_ms]
    abandoned = [r for r in rows if not r.answered_ms and r.outcome == "abandoned"]
    limit = threshold_s * 1000
    within = sum(1 for r in answered if _wait_ms(r) <= limit)
    late = sum(1 for r in abandoned if _wait_ms(r) > limit)
    waits = [_wait_ms(r) for r in [*answered, *abandoned]]
    talks = [(r.ended_ms - r.answered_ms) / 1000 for r in answered if r.ended_ms]
    return CallFigures(
        offered=len(rows),
        answered=len(answered),
        abandoned=len(abandoned),
        other_outcomes=len(rows) - len(answered) - len(abandoned),
        service_level=within / (len(answered) + late) if answered or late else None,
        asa_s=statistics.fmean(_wait_ms(r) / 1000 for r in answered) if answered else None,
        abandonment=len(abandoned) / len(rows) if rows else None,
        longest_wait_s=max(waits, default=0) / 1000,
        talk_s=statistics.fmean(talks) if talks else None,
    )


def lost_calls(accepted: Iterable[str], rows_by_node: Mapping[str, Sequence[CallRow]]) -> list[str]:
    """Accepted calls that do not have exactly one terminal outcome over all nodes' records."""
    outcomes: dict[str, int] = defaultdict(int)
    for rows in rows_by_node.values():
        for row in rows:
            if row.outcome:
                outcomes[row.call_id] += 1
    return sorted(call for call in set(accepted) if outcomes.get(call, 0) != 1)


def double_bookings(
    legs: Iterable[Leg], now_ms: int, *, offers: bool = False
) -> list[tuple[str, str, str]]:
    """(agent, call, call) for each pair of one agent's legs that overlap while the agent talks
    on both (answered to ended, I2's reading); with `offers`, from the offer on, unanswered legs
    included. An open leg (never ended) lasts until `now_ms`."""
    by_agent: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for leg in legs:
        if offers or leg.answered_ms:
            start = leg.offered_ms if offers else leg.answered_ms
            by_agent[leg.agent_id].append((start, leg.ended_ms or now_ms, leg.call_id))
    found = []
    for agent, own in sorted(by_agent.items()):
        own.sort()
        latest_end, latest_call = -1, ""
        for start, end, call in own:
            if start < latest_end and call != latest_call:
                found.append((agent, latest_call, call))
            if end > latest_end:
                latest_end, latest_call = end, call
    return found


def peak_concurrent(spans: Iterable[tuple[int, int]]) -> int:
    """The most (start, end) spans open at once; an end at the same time as a start comes
    first (a call that ends as another is answered does not overlap it)."""
    edges = sorted(e for start, end in spans if end > start for e in ((start, 1), (end, -1)))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


@dataclass(frozen=True, slots=True)
class AudioFigures:
    answered: int
    verified: int
    failed: int
    failures: tuple[tuple[str, str], ...]
    """(call, what the check found missing) of each failed call."""


def audio_figures(results: Iterable[tuple[str, str]], verified: str = "verified") -> AudioFigures:
    """From (call, result) of every answered call: `verified`, or why not ("" when the call
    was never checked: a failure too)."""
    results = list(results)
    failures = tuple(
        (call, result or "not checked") for call, result in results if result != verified
    )
    return AudioFigures(len(results), len(results) - len(failures), len(failures), failures)


def offer_to_answer_ms(legs: Iterable[Leg]) -> list[float]:
    return [float(leg.answered_ms - leg.offered_ms) for leg in legs if leg.answered_ms]


def arrival_to_offer_ms(rows: Iterable[CallRow], legs: Iterable[Leg]) -> list[float]:
    """For each call, its arrival to its first offer: the system's own delay when an agent is
    free, the queue wait beside it when none is."""
    first: dict[str, int] = {}
    for leg in legs:
        if leg.kind == "agent" and (
            leg.call_id not in first or leg.offered_ms < first[leg.call_id]
        ):
            first[leg.call_id] = leg.offered_ms
    return [float(first[r.call_id] - r.arrived_ms) for r in rows if r.call_id in first]


def occupancy(
    busy: Iterable[tuple[str, float, float]], agents: int, start_s: float, end_s: float
) -> float | None:
    """Busy agent-seconds within [start_s, end_s) over agents times its length; `busy` holds
    (agent, start, end) spans, merged per agent where they overlap (an offer may reach an agent
    before its client has heard that the last call is over)."""
    if agents <= 0 or end_s <= start_s:
        return None
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for agent, a, b in busy:
        spans[agent].append((max(a, start_s), min(b, end_s)))
    total = 0.0
    for own in spans.values():
        reach = start_s
        for a, b in sorted(own):
            a = max(a, reach)
            if b > a:
                total += b - a
                reach = b
    return total / (agents * (end_s - start_s))


def percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- Prometheus text ----------------------------------------------------------------------------

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text exposition: (name, labels) -> value."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        try:
            samples[(match["name"], labels)] = float(match["value"])
        except ValueError:
            continue
    return samples


def metric_delta(before: Samples, after: Samples) -> Samples:
    """after - before (counters and histograms of the run)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def histogram(samples: Samples, name: str) -> dict[str, float | None]:
    """Mean, p50 and p99 (ms) of a histogram summed over its labels (bucket interpolation)."""
    count = total(samples, f"{name}_count")
    if count <= 0:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}
    buckets: dict[float, float] = defaultdict(float)
    for (n, labels), value in samples.items():
        if n == f"{name}_bucket":
            le = dict(labels)["le"]
            buckets[math.inf if le == "+Inf" else float(le)] += value
    bounds = sorted(buckets.items())

    def quantile(q: float) -> float:
        rank, lower, seen = q * count, 0.0, 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower * 1000
                share = (rank - seen) / (cumulative - seen) if cumulative > seen else 1.0
                return (lower + (bound - lower) * share) * 1000
            lower, seen = bound, cumulative
        return lower * 1000

    return {
        "count": count,
        "mean_ms": total(samples, f"{name}_sum") / count * 1000,
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
    }
