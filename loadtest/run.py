"""`callmesh loadtest SCENARIO`: start a local cluster shaped by the scenario (or drive a running
one on loopback by URL), run its traffic through the public API, collect what the nodes recorded,
and write the report (report.txt, report.json, report.png) to the output directory.

In media mode (`mode = "media"` in the scenario) every caller and agent is a WebRTC leg of
loadtest/media.py sending its own tone, and every answered call's audio is checked both ways;
a call whose audio was not verified fails the checks as a lost call does.

Partitions are scenario events: each node is told (POST /debug/faults) to cut its links to the
nodes on the other side, and healed after `for_s`; the nodes must run with fault injection (the
clusters this command starts do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

from loadtest import erlang, kpi
from loadtest.client import Credentials, NodeApi
from loadtest.report import render_text, write_plot
from loadtest.scenario import Partition, Scenario, queues_toml
from loadtest.traffic import Traffic, plan_agents, plan_calls, print_progress

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
LEGS_CONCURRENCY = 32
BIN_S = 5.0
TOKEN_TTL_MS = 6 * 3600 * 1000
CURVE_S = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
"""Values of T the report gives the service level for, measured and predicted."""


class LoadTestError(RuntimeError):
    code = "loadtest_failed"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    site: str
    http: str
    grpc: str


@dataclass(frozen=True, slots=True)
class Options:
    siloed: bool = False
    url: str | None = None
    out: Path = Path("loadtest-report")
    credentials: Credentials = field(default_factory=Credentials)
    progress: bool = True


def check_loopback(url: str) -> str:
    """`url` as http://host:port when its host is a loopback address; LoadTestError otherwise."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or parsed.port is None:
        raise LoadTestError(f"--url must be a loopback http://host:port, got {url!r}")
    return f"http://{host}:{parsed.port}"


# -- the cluster ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_cluster(scenario: Scenario, siloed: bool, root: Path) -> AsyncIterator[Any]:
    from node.localcluster import LocalCluster, SitePlan

    sites = [SitePlan(s.name, s.trust, s.nodes) for s in scenario.sites]
    # every simulated caller comes from one address: no per-address limit on POST /calls
    unlimited = {
        f"{s.name}-n{i + 1}": "caller_rate_per_s = 0\n" for s in sites for i in range(s.nodes)
    }
    cluster = LocalCluster(
        sites,
        root,
        fast=True,
        queues_toml=queues_toml(scenario, siloed=siloed),
        wan_delay_ms=scenario.wan_delay_ms,
        extra_toml=unlimited,
    )
    async with cluster:
        yield cluster


def cluster_nodes(cluster: Any) -> list[NodeInfo]:
    return [
        NodeInfo(node_id, plan.site.name, f"http://{plan.http}", plan.grpc)
        for node_id, plan in cluster.plans.items()
    ]


def cluster_credentials(cluster: Any) -> Credentials:
    """The admin's password of a started LocalCluster, and agent tokens signed with an in-house
    site's key (the agents are not in its users file, and POST /login is rate-limited per
    address)."""
    local = getattr(cluster, "credentials", None)
    if local is None:  # a cluster without authentication
        return Credentials()
    from node.users import Role

    def mint(user: str) -> str:
        return str(local.mint(user, Role.AGENT, TOKEN_TTL_MS / 1000, local.home("admin")))

    return Credentials("admin", local.passwords["admin"], mint=mint)


async def discover(
    http: aiohttp.ClientSession, url: str, credentials: Credentials
) -> list[NodeInfo]:
    api = NodeApi(http, url, credentials)
    status, view = await api.request("GET", "/registry", user=credentials.admin_user or None)
    if status != 200 or not isinstance(view, dict):
        raise LoadTestError(f"GET {url}/registry answered {status}")
    return [
        NodeInfo(n["node_id"], n["site"], check_loopback(n["http"]), n["grpc"])
        for n in view["nodes"]
        if n.get("up")
    ]


async def wait_ready(apis: dict[str, NodeApi]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for node_id, api in apis.items():
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, _ = await api.request("GET", "/readyz")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                raise LoadTestError(f"node {node_id} not ready within {READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.5)


async def wait_agents_seen(apis: dict[str, NodeApi], count: int, admin: str | None) -> None:
    """Until every node's registry shows at least `count` available agents (gossip)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for node_id, api in apis.items():
        while True:
            status, view = await api.request("GET", "/registry", user=admin)
            if status == 200 and isinstance(view, dict):
                seen = sum(1 for a in view["agents"] if a["state"] == "available")
                if seen >= count:
                    break
            if time.monotonic() > deadline:
                raise LoadTestError(f"node {node_id} did not see the {count} agents by gossip")
            await asyncio.sleep(0.5)


# -- partitions ---------------------------------------------------------------------------------


async def run_events(
    scenario: Scenario,
    nodes: list[NodeInfo],
    apis: dict[str, NodeApi],
    admin: str | None,
    start: float,
    islands: list[dict[str, Any]],
) -> None:
    """Cut and heal the links of each partition event at its time (seconds from `start`)."""

    async def block(node: NodeInfo, addresses: list[str]) -> None:
        status, body = await apis[node.node_id].request(
            "POST", "/debug/faults", {"block": addresses}, user=admin
        )
        if status != 200:
            raise LoadTestError(
                f"POST /debug/faults at {node.node_id} answered {status} {body!r:.80} "
                f"(the node needs fault_injection)"
            )

    async def at(t: float) -> None:
        delay = start + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    for event in sorted(scenario.events, key=lambda e: e.at_s):
        await at(event.at_s)
        await asyncio.gather(*(block(n, _other_side(event, n, nodes)) for n in nodes))
        began = time.monotonic() - start
        log.warning("partition: %s cut off at %.1f s", ", ".join(event.island), began)
        await at(event.at_s + event.for_s)
        await asyncio.gather(*(block(n, []) for n in nodes))
        healed = time.monotonic() - start
        islands.append({"island": list(event.island), "from_s": began, "to_s": healed})
        log.warning("partition healed at %.1f s", healed)


def _other_side(event: Partition, node: NodeInfo, nodes: list[NodeInfo]) -> list[str]:
    return [n.grpc for n in nodes if event.cuts(node.site, n.site)]


# -- collecting ---------------------------------------------------------------------------------


async def scrape(apis: dict[str, NodeApi], admin: str | None) -> kpi.Samples:
    merged: kpi.Samples = {}
    for node_id, api in apis.items():
        status, text = await api.text("/metrics", user=admin)
        if status != 200:
            raise LoadTestError(f"GET /metrics at {node_id} answered {status}")
        for (name, labels), value in kpi.parse_metrics(text).items():
            key = (name, labels | {("node", node_id)})
            merged[key] = value
    return merged


async def records(apis: dict[str, NodeApi], admin: str | None) -> dict[str, list[kpi.CallRow]]:
    rows = {}
    for node_id, api in apis.items():
        status, body = await api.request("GET", "/records?limit=10000", user=admin)
        if status != 200 or not isinstance(body, dict):
            raise LoadTestError(f"GET /records at {node_id} answered {status}")
        rows[node_id] = [kpi.CallRow.from_json(r) for r in body["calls"]]
    return rows


async def legs(
    apis: dict[str, NodeApi], owners: dict[str, str], admin: str | None
) -> list[kpi.Leg]:
    gate = asyncio.Semaphore(LEGS_CONCURRENCY)
    found: list[kpi.Leg] = []

    async def one(call_id: str, node: str) -> None:
        async with gate:
            status, body = await apis[node].request("GET", f"/records/{call_id}", user=admin)
        if status == 200 and isinstance(body, dict):
            found.extend(
                kpi.Leg(
                    call_id,
                    str(leg["agent_id"]),
                    int(leg["offered_ms"]),
                    int(leg["answered_ms"]),
                    int(leg["ended_ms"]),
                    str(leg.get("kind", "agent")),
                )
                for leg in body["legs"]
            )

    await asyncio.gather(*(one(c, n) for c, n in owners.items() if n in apis))
    return found


# -- the run ------------------------------------------------------------------------------------


async def run(
    scenario: Scenario, options: Options, out: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the scenario; the report (also written to options.out)."""
    options.out.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        connector = aiohttp.TCPConnector(limit=0)
        http = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        credentials = options.credentials
        if options.url is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="callmesh-lt-")))
            out(f"starting a local cluster for {scenario.name} in {root}")
            cluster = await stack.enter_async_context(
                started_cluster(scenario, options.siloed, root)
            )
            nodes = cluster_nodes(cluster)
            credentials = (
                cluster_credentials(cluster) if credentials == Credentials() else credentials
            )
        else:
            nodes = await discover(http, check_loopback(options.url), credentials)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while missing := {s.name for s in scenario.sites} - {n.site for n in nodes}:
            if options.url is None or time.monotonic() > deadline:
                sites = ", ".join(sorted(missing))
                raise LoadTestError(f"the cluster has no node at sites {sites}")
            await asyncio.sleep(1.0)  # a cluster just started: its nodes appear by gossip
            nodes = await discover(http, check_loopback(options.url), credentials)
        apis = {n.node_id: NodeApi(http, n.http, credentials) for n in nodes}
        admin = credentials.admin_user or None
        phones = None
        if scenario.mode == "media":
            from loadtest.media import Phones

            logging.getLogger("aioice").setLevel(logging.WARNING)
            phones = await stack.enter_async_context(Phones())
        await wait_ready(apis)
        nodes_of: dict[str, list[str]] = {}
        for n in sorted(nodes, key=lambda n: n.node_id):
            nodes_of.setdefault(n.site, []).append(n.node_id)
        agents = plan_agents(scenario, nodes_of)
        calls = plan_calls(scenario, nodes_of, siloed=options.siloed)
        traffic = Traffic(
            scenario,
            apis,
            agents,
            calls,
            progress=print_progress if options.progress else None,
            caller_user=admin if options.url is not None else None,
            phones=phones,
        )
        out(f"logging in {len(agents)} agents at {len(nodes)} nodes")
        await traffic.log_in()
        await wait_agents_seen(apis, len(agents), admin)
        before = await scrape(apis, admin)
        out(
            f"traffic: {len(calls)} calls over {scenario.duration_s:g} s "
            f"({'siloed' if options.siloed else 'pooled'}, {scenario.mode})"
        )
        islands: list[dict[str, Any]] = []
        start_wall_ms = time.time_ns() // 1_000_000
        events = asyncio.create_task(
            run_events(scenario, nodes, apis, admin, time.monotonic(), islands)
        )
        try:
            await traffic.run()
        finally:
            if not events.done():
                events.cancel()
                await asyncio.gather(
                    *(
                        apis[n.node_id].request("POST", "/debug/faults", {"block": []}, user=admin)
                        for n in nodes
                    ),
                    return_exceptions=True,
                )
            with contextlib.suppress(asyncio.CancelledError):
                await events
        after = await scrape(apis, admin)
        rows = await records(apis, admin)
        where = {r.call_id: node for node, node_rows in rows.items() for r in node_rows}
        owners = {t.call_id: where.get(t.call_id, t.node) for t in calls if t.call_id}
        all_legs = await legs(apis, owners, admin)
        await traffic.log_out()
        report = build_report(
            scenario, options, nodes, traffic, rows, all_legs, before, after, islands, start_wall_ms
        )
    (options.out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    text = render_text(report)
    (options.out / "report.txt").write_text(text)
    write_plot(report, options.out / "report.png")
    out(text)
    return report


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def build_report(
    scenario: Scenario,
    options: Options,
    nodes: list[NodeInfo],
    traffic: Traffic,
    rows_by_node: dict[str, list[kpi.CallRow]],
    legs: list[kpi.Leg],
    before: kpi.Samples,
    after: kpi.Samples,
    islands: list[dict[str, Any]],
    start_wall_ms: int,
) -> dict[str, Any]:
    site_of_node = {n.node_id: n.site for n in nodes}
    tracks = [t for t in traffic.calls if t.call_id]
    accepted = {t.call_id: t for t in tracks}
    rows = {r.call_id: r for rs in rows_by_node.values() for r in rs if r.call_id in accepted}
    window = (scenario.warmup_s, scenario.duration_s)
    lo_ms, hi_ms = start_wall_ms + window[0] * 1000, start_wall_ms + window[1] * 1000
    measured = [r for r in rows.values() if lo_ms <= r.arrived_ms < hi_ms]
    figures = kpi.call_figures(measured, scenario.service_level_s)
    busy = traffic.busy
    sites = [s.name for s in scenario.sites]
    agents_at = {s: sum(1 for a in traffic.agents if a.site == s) for s in sites}
    answered_all = sum(1 for r in rows.values() if r.answered_ms)
    busy_total = sum(b.end_s - b.start_s for b in busy)
    busy_per_call = busy_total / answered_all if answered_all else None
    # the model's h: an agent is held per offer that reached it, answered or given up by the
    # caller while it rang (a caller whose patience ends in the ring holds the agent that long)
    busy_per_offer = busy_total / len(busy) if busy else None
    o2a = kpi.offer_to_answer_ms(leg for leg in legs if leg.call_id in rows)
    a2o = kpi.arrival_to_offer_ms(measured, legs)
    spans = [(b.agent_id, b.start_s, b.end_s) for b in busy]
    occ = kpi.occupancy(spans, len(traffic.agents), *window)
    cross = [
        r
        for r in rows.values()
        if r.answered_ms and site_of_node.get(r.agent_node) != site_of_node.get(r.owner_node)
    ]
    lost = kpi.lost_calls(accepted, rows_by_node)
    agent_legs = [leg for leg in legs if leg.kind == "agent"]
    now_ms = time.time_ns() // 1_000_000
    doubles = kpi.double_bookings(agent_legs, now_ms)
    overlapping = kpi.double_bookings(agent_legs, now_ms, offers=True)
    peak = kpi.peak_concurrent(
        (r.answered_ms, r.ended_ms or now_ms) for r in rows.values() if r.answered_ms
    )
    audio = _audio(traffic) if scenario.mode == "media" else None
    delta = kpi.metric_delta(before, after)
    decision = kpi.histogram(delta, "callmesh_routing_decision_seconds")
    talk = figures.talk_s
    measured_kpis = {
        "offered": figures.offered,
        "answered": figures.answered,
        "abandoned": figures.abandoned,
        "other_outcomes": figures.other_outcomes,
        "service_level": _round(figures.service_level, 4),
        "asa_s": _round(figures.asa_s),
        "aht_s": _round(talk + scenario.wrap_up_s if talk is not None else None),
        "abandonment": _round(figures.abandonment, 4),
        "occupancy": _round(occ, 4),
        "longest_wait_s": _round(figures.longest_wait_s),
    }
    per_site: dict[str, dict[str, Any]] = {}
    for site in sites:
        own = [r for r in measured if accepted[r.call_id].site == site]
        f = kpi.call_figures(own, scenario.service_level_s)
        site_busy = ((b.agent_id, b.start_s, b.end_s) for b in busy if b.site == site)
        per_site[site] = {
            "agents": agents_at[site],
            "offered": f.offered,
            "service_level": _round(f.service_level, 4),
            "asa_s": _round(f.asa_s),
            "abandonment": _round(f.abandonment, 4),
            "occupancy": _round(kpi.occupancy(site_busy, agents_at[site], *window), 4),
            "longest_wait_s": _round(f.longest_wait_s),
        }
    o2a_mean = statistics.fmean(o2a) / 1000 if o2a else scenario.ring_delay_s
    system = {
        "routing_decision_ms": {k: _round(v) for k, v in decision.items()},
        "offer_to_answer_ms": {
            "mean": _round(statistics.fmean(o2a) if o2a else None, 1),
            "p50": _round(kpi.percentile(o2a, 0.5), 1),
            "p99": _round(kpi.percentile(o2a, 0.99), 1),
        },
        "arrival_to_offer_ms": {
            "p50": _round(kpi.percentile(a2o, 0.5), 1),
            "p90": _round(kpi.percentile(a2o, 0.9), 1),
        },
        "refused_offers": int(kpi.total(delta, "callmesh_offers_total", result="refused")),
        "offers": int(kpi.total(delta, "callmesh_offers_total")),
        "offer_timeouts": int(kpi.total(delta, "callmesh_offers_total", result="timeout")),
        "offer_failures": int(kpi.total(delta, "callmesh_offers_total", result="failed")),
        "cross_site_share": _round(len(cross) / answered_all if answered_all else None, 4),
        "lost_calls": len(lost),
        "lost_call_ids": lost[:20],
        "double_bookings": len(doubles),
        "double_booking_examples": [_overlap(d, legs, start_wall_ms) for d in doubles[:10]],
        "overlapping_offers": len(overlapping),
        "overlapping_offer_examples": [_overlap(d, legs, start_wall_ms) for d in overlapping[:10]],
        "client_double_offers": traffic.client_double_offers,
        "answers_refused": traffic.answer_refused,
        "calls_refused": sum(1 for t in traffic.calls if t.refused),
        "callers_gave_up": sum(1 for t in tracks if t.gave_up),
        "agent_busy_per_call_s": _round(busy_per_call),
        "agent_busy_per_offer_s": _round(busy_per_offer),
        "peak_talking_calls": peak,
        "audio": audio,
        "client_errors": len(traffic.errors),
        "client_error_examples": traffic.errors[:10],
    }
    # the rates the Poisson draw gave in the window, not the planned ones
    entries = Counter(site_of_node.get(r.owner_node, "") for r in measured)
    arrived = {site: entries[site] / (window[1] - window[0]) for site in sites}
    answered_busy = [b.end_s - b.start_s for b in busy if b.answered]
    measured_scv = (
        statistics.pvariance(answered_busy) / statistics.fmean(answered_busy) ** 2
        if len(answered_busy) > 1
        else None
    )
    yardstick = _yardstick(
        scenario, options, agents_at, busy_per_offer, o2a_mean, measured, arrived, measured_scv
    )
    return {
        "scenario": {
            "name": scenario.name,
            "mode": "siloed" if options.siloed else "pooled",
            "calls": scenario.mode,
            "sites": {s.name: {"trust": s.trust, "nodes": s.nodes} for s in scenario.sites},
            "agents": len(traffic.agents),
            "calls_per_s": scenario.total_rate,
            "duration_s": scenario.duration_s,
            "warmup_s": scenario.warmup_s,
            "service_level_s": scenario.service_level_s,
            "ring_delay_s": scenario.ring_delay_s,
            "wrap_up_s": scenario.wrap_up_s,
            "handle": asdict(scenario.handle),
            "patience": asdict(scenario.patience),
            "wan_delay_ms": scenario.wan_delay_ms,
            "nodes": len(nodes),
        },
        "window_s": list(window),
        "measured": measured_kpis,
        "per_site": per_site,
        "system": system,
        "yardstick": yardstick,
        "islands": islands,
        "timeline": _timeline(scenario, traffic, rows, accepted, start_wall_ms, sites),
        "definitions": kpi.DEFINITIONS,
        "checks": _checks(len(lost), len(doubles), audio),
    }


def _audio(traffic: Traffic) -> dict[str, Any]:
    """Media mode: answered calls, those with audio verified both ways, and the failures."""
    answered = [t for t in traffic.calls if t.answered_s >= 0]
    figures = kpi.audio_figures((t.call_id, t.audio) for t in answered)
    took = [t.audio_s for t in answered if t.audio == "verified"]
    return {
        "answered": figures.answered,
        "verified_both_ways": figures.verified,
        "failed": figures.failed,
        "answer_to_verified_s": {
            "p50": _round(kpi.percentile(took, 0.5), 2),
            "max": _round(max(took, default=None), 2),
        },
        "failed_examples": [{"call": c, "problem": p} for c, p in figures.failures[:10]],
    }


def _checks(lost: int, doubles: int, audio: dict[str, Any] | None) -> dict[str, Any]:
    """No lost call, no double booking, and in media mode no call without audio both ways."""
    checks: dict[str, Any] = {"lost_calls": lost, "double_bookings": doubles}
    if audio is not None:
        checks["audio_failed"] = audio["failed"]
    checks["passed"] = not any(v for v in checks.values())
    return checks


def _overlap(
    found: tuple[str, str, str], legs: list[kpi.Leg], start_wall_ms: int
) -> dict[str, Any]:
    """A double booking with both legs' times (seconds from the start of traffic)."""
    agent, first, second = found
    by_call = {(leg.agent_id, leg.call_id): leg for leg in legs}

    def times(call: str) -> dict[str, Any]:
        leg = by_call[(agent, call)]
        at = [leg.offered_ms, leg.answered_ms, leg.ended_ms]
        return {
            "call": call,
            "offered_answered_ended_s": [
                round((ms - start_wall_ms) / 1000, 2) if ms else None for ms in at
            ],
        }

    return {"agent": agent, "first": times(first), "second": times(second)}


def _yardstick(
    scenario: Scenario,
    options: Options,
    agents_at: dict[str, int],
    busy_per_offer: float | None,
    offer_to_answer_s: float,
    measured: list[kpi.CallRow],
    arrived: dict[str, float] | None = None,
    measured_scv: float | None = None,
) -> dict[str, Any]:
    """Erlang predictions for the pooled agents and for each site alone (siloed), and the
    service level against T, measured and predicted. `arrived`: the arrival rate per site in
    the measured window; the model takes it over the planned rate (near full occupancy a 2 %
    busier draw moves the predicted service level at short T by 10 points). Beside plain Erlang
    A/C, the prediction corrected for the busy time's variability (erlang.general_prediction),
    with Cs^2 from the scenario's talk distribution over the busy time h (ring and wrap-up are
    constant); `measured_scv`, the busy time's Cs^2 as the agents saw it, is shown beside."""
    planned_h = scenario.ring_delay_s + scenario.handle.mean_s + scenario.wrap_up_s
    h = busy_per_offer if busy_per_offer else planned_h
    talk = scenario.handle
    scv = erlang.handle_scv(erlang.talk_variance(talk.kind, talk.mean_s, talk.sigma), h)
    patience = None if scenario.patience.kind == "none" else scenario.patience.mean_s
    total_agents = sum(agents_at.values())

    def shifted(t: float) -> float:
        # the agent is taken at the offer; the caller's wait ends at the answer, a ring later
        return max(0.0, t - offer_to_answer_s)

    def figures(rate: float, agents: int, t: float) -> dict[str, Any]:
        a = erlang.predict(rate, h, agents, shifted(t), patience)
        c = erlang.erlang_c_prediction(rate, h, agents, shifted(t))
        g = erlang.general_prediction(rate, h, agents, shifted(t), patience, scv)
        finite = math.isfinite(a.asa_s)
        return {
            "rate_per_s": round(rate, 3),
            "agents": agents,
            "service_level": round(a.service_level, 4),
            "asa_s": round(a.asa_s + offer_to_answer_s, 3) if finite else None,
            "abandonment": round(a.abandonment, 4),
            "occupancy": round(a.occupancy, 4),
            "erlang_c_service_level": round(c.service_level, 4),
            "corrected_service_level": round(g.service_level, 4),
            "corrected_asa_s": (
                round(g.asa_s + offer_to_answer_s, 3) if math.isfinite(g.asa_s) else None
            ),
        }

    planned = dict.fromkeys(agents_at, 0.0)
    for stream in scenario.arrivals:
        planned[stream.site] += stream.rate_per_s
    realised = arrived is not None and sum(arrived.values()) > 0
    rates = {s: (arrived or {}).get(s, 0.0) for s in agents_at} if realised else planned
    total_rate = sum(rates.values())

    def predicted(t: float) -> dict[str, Any]:
        pooled = figures(total_rate, total_agents, t)
        # a site alone: only where callers arrive and agents work (Erlang needs both)
        silos = {
            s: figures(rates[s], agents_at[s], t)
            for s in agents_at
            if agents_at[s] > 0 and rates[s] > 0
        }
        alone = sum(silos[s]["service_level"] * rates[s] for s in silos) / total_rate
        fixed = sum(silos[s]["corrected_service_level"] * rates[s] for s in silos) / total_rate
        return {
            "pooled": pooled,
            "siloed": silos,
            "siloed_service_level": round(alone, 4),
            "siloed_corrected_service_level": round(fixed, 4),
        }

    main = predicted(scenario.service_level_s)
    curve = []
    for t in sorted({*CURVE_S, scenario.service_level_s}):
        p = predicted(t)
        curve.append(
            {
                "t_s": t,
                "measured": _round(kpi.call_figures(measured, t).service_level, 4),
                "pooled": p["pooled"]["service_level"],
                "pooled_corrected": p["pooled"]["corrected_service_level"],
                "pooled_erlang_c": p["pooled"]["erlang_c_service_level"],
                "siloed": p["siloed_service_level"],
                "siloed_corrected": p["siloed_corrected_service_level"],
            }
        )
    return {
        "model": "Erlang A" if patience is not None else "Erlang C",
        "rate_per_s": round(total_rate, 3),
        "planned_rate_per_s": round(sum(planned.values()), 3),
        "handle_s": round(h, 3),
        "planned_handle_s": round(planned_h, 3),
        "handle_scv": round(scv, 3),
        "measured_handle_scv": _round(measured_scv),
        "threshold_s": round(shifted(scenario.service_level_s), 3),
        "offer_to_answer_s": round(offer_to_answer_s, 3),
        "patience_s": patience,
        **main,
        "curve": curve,
        "compare_with": "siloed" if options.siloed else "pooled",
        "note": (
            "the rate is the arrival rate measured in the window (the Poisson draw, not the "
            "planned rate); "
            "h is the measured agent busy time per offer that reached an agent (offer to free "
            "after wrap-up; an offer whose caller gave up while it rang holds the agent only "
            "that long, so h is not the busy time per answered call); "
            "T is shortened by the measured offer-to-answer time and that time is added to the "
            "model's ASA, since the model's wait ends when an agent is taken and the caller's "
            "ends at the answer; corrected: the M/G/N(+M) form of the model for a busy time "
            "with squared coefficient of variation Cs^2 (handle_scv): waits scaled by "
            "(1 + Cs^2) / 2, P(wait) kept (loadtest/erlang.py, general_prediction)"
        ),
    }


def _timeline(
    scenario: Scenario,
    traffic: Traffic,
    rows: dict[str, kpi.CallRow],
    accepted: dict[str, Any],
    start_wall_ms: int,
    sites: list[str],
) -> dict[str, Any]:
    samples = traffic.samples
    bins = int(scenario.duration_s // BIN_S) + 1
    level: dict[str, list[float | None]] = {}
    for site in sites:
        series: list[float | None] = []
        for b in range(bins):
            lo = start_wall_ms + b * BIN_S * 1000
            hi = lo + BIN_S * 1000
            own = [
                r
                for r in rows.values()
                if accepted[r.call_id].site == site and lo <= r.arrived_ms < hi
            ]
            series.append(_round(kpi.call_figures(own, scenario.service_level_s).service_level, 4))
        level[site] = series
    return {
        "t_s": [s.t_s for s in samples],
        "waiting": {site: [s.waiting[site] for s in samples] for site in sites},
        "occupancy": {
            site: [
                round(s.busy[site] / s.agents[site], 4) if s.agents[site] else None for s in samples
            ]
            for site in sites
        },
        "bin_s": BIN_S,
        "service_level": level,
    }


def command(
    path: Path,
    *,
    url: str | None = None,
    siloed: bool = False,
    out: Path | None = None,
    credentials: Credentials | None = None,
) -> int:
    """`callmesh loadtest`: 0 when the checks passed (no lost call, no double booking, in media
    mode no answered call without audio both ways), 1 when not, 2 on a bad scenario or
    cluster."""
    from loadtest.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(path)
        if url is not None:
            check_loopback(url)
    except (ScenarioError, LoadTestError) as error:
        print(f"callmesh loadtest: {error}", file=sys.stderr)
        return 2
    mode = "siloed" if siloed else "pooled"
    target = out or Path(f"loadtest-{scenario.name}-{mode}")
    options = Options(siloed=siloed, url=url, out=target, credentials=credentials or Credentials())
    try:
        report = asyncio.run(run(scenario, options))
    except LoadTestError as error:
        print(f"callmesh loadtest: {error}", file=sys.stderr)
        return 2
    print(f"report: {target / 'report.txt'}, {target / 'report.json'}, {target / 'report.png'}")
    return 0 if report["checks"]["passed"] else 1
