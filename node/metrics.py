"""Every Prometheus metric of a node, defined once: the only module that imports prometheus_client.

Names carry their unit (`_seconds`, `_bytes`, `_ratio`; counters end in `_total` when exposed);
labels are low-cardinality: site, queue, outcome, result, state, tier, kind, hook, operation.
Never a call id or an agent id.

Two kinds of metric live here:

- instruments that code updates as things happen (counters, histograms, a few gauges), defined at
  module level, e.g. `CALLS.labels(site, queue, "completed").inc()`;
- a collector that reads the node's live objects at scrape time (`install(...)`): registry size,
  agents by state, queue summaries, gossip peers and bytes, the etcd lease, node identity. Reading
  at scrape time keeps the registry pure and the numbers exact (an oldest wait is computed when
  Prometheus asks, not when a call last moved).

`exposition()` renders the default registry (with the process and Python collectors of
prometheus_client) for `GET /metrics`.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from node.config import NodeConfig
from registry.clock import millis, wall_ms
from registry.records import AgentState
from registry.registry import Registry
from registry.sync import Delta

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: unread

# -- label values (documented here so dashboards, rules and callers agree) -----------------------

CALL_OUTCOMES = ("completed", "abandoned", "voicemail", "overflowed", "failed")
"""`outcome` of CALLS: the one terminal outcome of every call (DESIGN.md I3)."""
WAIT_RESULTS = ("answered", "abandoned", "overflowed", "voicemail", "failed")
"""`result` of CALL_WAIT: how a wait in a queue ended."""
OFFER_RESULTS = ("accepted", "refused", "timeout", "expired", "failed")
"""`result` of OFFERS and RESERVATION: what the agent's home node answered, or why not."""
MEDIA_KINDS = ("caller", "agent", "internode", "trunk", "phone")
"""`kind` of the media metrics: which leg."""
HOOK_RESULTS = ("ok", "failed", "timeout")
"""`result` of HOOK_RUNS."""
SIP_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "other")
"""`method` of SIP_REQUESTS (any other method is counted as "other")."""
SIP_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "none")
"""`status_class` of SIP_REQUESTS: the final response the node gave ("none": an ACK)."""
SIP_REFUSALS = (
    "unknown_number",
    "not_allowed",
    "unauthorized",
    "bad_offer",
    "no_rtp_port",
    "draining",
    "overloaded",
    "other",
)
"""`reason` of SIP_CALLS_REFUSED."""


def state_label(state: AgentState) -> str:
    """An agent state as the HTTP API spells it: available, not-ready, wrap-up, ..."""
    return state.name.lower().replace("_", "-")


# -- calls, queues, offers, routing (the call owner's routing code updates these) ----------------

CALLS = Counter(
    "callmesh_calls",
    "Calls ended on this node (their owner), by site, queue and terminal outcome.",
    ["site", "queue", "outcome"],
)
CALL_WAIT = Histogram(
    "callmesh_call_wait_seconds",
    "Time calls waited in a queue, by how the wait ended (result).",
    ["site", "queue", "result"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200),
)
CALL_TALK = Histogram(
    "callmesh_call_talk_seconds",
    "Time from answer to hang-up of answered calls.",
    ["site", "queue"],
    buckets=(10, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600),
)
SERVICE_LEVEL_CALLS = Counter(
    "callmesh_service_level_calls",
    "Calls that count for the service level (answered, or abandoned after the queue's short-"
    "abandon time), by whether they were answered within the queue's target wait (met).",
    ["site", "queue", "met"],
)
SERVICE_LEVEL_TARGET = Gauge(
    "callmesh_service_level_target_ratio",
    "The queue's service-level goal: the share of calls to answer within the target wait.",
    ["site", "queue"],
)
SERVICE_LEVEL_THRESHOLD = Gauge(
    "callmesh_service_level_threshold_seconds",
    "The queue's target wait for the service level.",
    ["site", "queue"],
)
OFFERS = Counter(
    "callmesh_offers",
    "Offers this node made (reserve an agent for a call), by the agent's tier and the result.",
    ["site", "tier", "result"],
)
ROUTING_DECISION = Histogram(
    "callmesh_routing_decision_seconds",
    "Time to rank the candidate agents for one call.",
    ["site"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
RESERVATION = Histogram(
    "callmesh_reservation_seconds",
    "Round trip of one reserve request to an agent's home node, by result.",
    ["site", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# -- media and hooks ------------------------------------------------------------------------------

MEDIA_LEGS = Gauge(
    "callmesh_media_legs",
    "Media legs open on this node, by kind of leg.",
    ["site", "kind"],
)
CPU_SHARE = Gauge(
    "callmesh_cpu_share_ratio",
    "Share of one core this node's process used, smoothed over a few seconds (admission control).",
)
MEDIA_CALLS_REFUSED = Counter(
    "callmesh_media_calls_refused",
    "New media calls refused by admission control (the node near the end of its core or its cap).",
)
MEDIA_PACKETS_RECEIVED = Counter(
    "callmesh_media_packets_received",
    "RTP packets received on this node's media legs.",
    ["site", "kind"],
)
MEDIA_PACKETS_LOST = Counter(
    "callmesh_media_packets_lost",
    "RTP packets lost on the way to this node's media legs (from sequence gaps or RTCP).",
    ["site", "kind"],
)
MEDIA_JITTER = Histogram(
    "callmesh_media_jitter_seconds",
    "Interarrival jitter of media legs, one observation per leg and report.",
    ["site", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5),
)
MEDIA_ROUND_TRIP = Histogram(
    "callmesh_media_round_trip_seconds",
    "Round-trip time of WebRTC legs from RTCP reports, one observation per leg and report.",
    ["site", "kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1),
)
HOOK_RUNS = Counter(
    "callmesh_hook_runs",
    "Hook script runs, by hook (the configured event name) and result (ok, failed, timeout).",
    ["site", "hook", "result"],
)
HOOK_DURATION = Histogram(
    "callmesh_hook_duration_seconds",
    "Wall time of hook script runs.",
    ["site", "hook"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# -- SIP (sip/trunk.py and sip/phones.py update these) --------------------------------------------

SIP_REQUESTS = Counter(
    "callmesh_sip_requests",
    "SIP requests from trunks and phones, by method and the class of the final response sent.",
    ["method", "status_class"],
)
SIP_CALLS_ACTIVE = Gauge(
    "callmesh_sip_calls_active",
    "SIP dialogs open now: calls in from trunks (in), calls out to agents' phones (out).",
    ["direction"],
)
SIP_CALLS_REFUSED = Counter(
    "callmesh_sip_calls_refused",
    "INVITEs from trunks the node did not take, by reason (e.g. unknown_number: no route for "
    "the dialled number).",
    ["reason"],
)
SIP_MALFORMED = Counter(
    "callmesh_sip_malformed",
    "SIP messages that could not be parsed (answered 400 when they could be, else dropped).",
)


def sip_request(method: str, status: int | None) -> None:
    """Count one SIP request and the final response the node gave it (None: none, an ACK)."""
    label = method if method in SIP_METHODS else "other"
    SIP_REQUESTS.labels(label, "none" if status is None else f"{status // 100}xx").inc()


def sip_refused(reason: str) -> None:
    SIP_CALLS_REFUSED.labels(reason if reason in SIP_REFUSALS else "other").inc()


# -- the fabric: registry, gossip, etcd, sessions (instrumented in node/) -----------------------

BUILD_INFO = Gauge(
    "callmesh_build_info",
    "Always 1: the callmesh version and the Python running it.",
    ["version", "python"],
)
REGISTRY_MERGED = Counter(
    "callmesh_registry_merged_entries",
    "Entries from peers that changed this node's registry replica.",
)
REGISTRY_REFUSED = Counter(
    "callmesh_registry_refused",
    "Registry writes and peer batches refused, by source (local, peer) and reason (error code).",
    ["source", "reason"],
)
GOSSIP_LAG = Histogram(
    "callmesh_gossip_convergence_lag_seconds",
    "Age of the newest entry of each pushed delta that changed this replica: from the write on "
    "the entry's home node to the merge here, relays included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
GOSSIP_SYNC_FAILURES = Counter(
    "callmesh_gossip_sync_failures",
    "Failed sync calls to gossip peers (the loop backs off and re-syncs by digest).",
)
ETCD_REQUEST = Histogram(
    "callmesh_etcd_request_duration_seconds",
    "Time until the site's etcd answered one request, fail-over retries included, by operation "
    "and outcome (ok, or the error code).",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ETCD_FAILOVERS = Counter(
    "callmesh_etcd_failovers",
    "Times requests moved to the next etcd endpoint after a connection error.",
)
ETCD_LEASES_LOST = Counter(
    "callmesh_etcd_leases_lost",
    "Times this node lost its etcd lease (and fenced itself until a new one was granted).",
)
ETCD_WATCH_RESTARTS = Counter(
    "callmesh_etcd_watch_restarts",
    "Times an etcd watch was lost and resumed from its last revision.",
)
AGENT_SESSIONS_REAPED = Counter(
    "callmesh_agent_sessions_reaped",
    "Agents this node took over and wrote offline after their node's lease expired.",
)


def _version() -> str:
    try:
        return metadata.version("callmesh")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(_version(), platform.python_version()).set(1)


def gossip_applied(delta: Delta, changed: int) -> None:
    """A batch from a peer was merged: count what changed; time pushed deltas (not loose
    entries from a digest round or a full state, whose age says nothing about propagation)."""
    if not changed:
        return
    REGISTRY_MERGED.inc(changed)
    if delta.to_seq <= 0:
        return
    newest = max(
        (entry.clock for entries in (delta.agents, delta.queues, delta.nodes) for entry in entries),
        default=0,
    )
    if newest:
        GOSSIP_LAG.observe(max(0.0, (wall_ms() - millis(newest)) / 1000))


def registry_refused(source: str, reason: str) -> None:
    REGISTRY_REFUSED.labels(source, reason).inc()


def etcd_operation(what: str) -> str:
    """The operation label of an etcd request, from the adapter's description of it
    ("get KEY", "get PREFIX*", "put KEY if at revision N", "lease N keep-alive", ...)."""
    words = what.split()
    if not words:
        return "other"
    if words[0] == "lease":
        return "lease_" + words[-1].replace("-", "")
    if " if at revision " in what:
        return "txn"
    if words[0] == "get" and what.endswith("*"):
        return "range"
    if words[0] in ("get", "put", "delete"):
        return words[0]
    return "other"


_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")


def timed_etcd_request(
    request: Callable[Concatenate[_S, str, _P], Awaitable[_R]],
) -> Callable[Concatenate[_S, str, _P], Coroutine[Any, Any, _R]]:
    """Decorates the etcd adapter's request method: `(self, what, ...)` is timed by operation
    and outcome (ok, or the `code` of the error it raised)."""

    @functools.wraps(request)
    async def timed(self: _S, what: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.monotonic()
        outcome = "ok"
        try:
            return await request(self, what, *args, **kwargs)
        except Exception as error:
            code = getattr(error, "code", None)
            outcome = code if isinstance(code, str) else "error"
            raise
        finally:
            ETCD_REQUEST.labels(etcd_operation(what), outcome).observe(time.monotonic() - started)

    return timed


# -- the live collector ---------------------------------------------------------------------------


class PeerView(Protocol):
    @property
    def synced(self) -> bool: ...


class GossipView(Protocol):
    """What the collector reads of node.gossip.Gossip."""

    @property
    def peers(self) -> Mapping[str, PeerView]: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...


class LeaseView(Protocol):
    """What the collector reads of node.etcd.Etcd."""

    @property
    def has_lease(self) -> bool: ...


class ReadinessView(Protocol):
    def reasons_not_ready(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class _Live:
    config: NodeConfig
    registry: Registry
    gossip: GossipView
    etcd: LeaseView
    readiness: ReadinessView


class LiveCollector:
    """Reads one node's live objects at scrape time. Registered once with the default registry;
    `install` points it at the node of this process (one node per process)."""

    def __init__(self) -> None:
        self._live: _Live | None = None

    def attach(self, live: _Live | None) -> None:
        self._live = live

    def describe(self) -> Iterable[Metric]:
        return ()  # names vary with what is attached; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        live = self._live
        if live is None:
            return
        yield from _identity(live)
        yield from _agents(live)
        yield from _queues(live)
        yield from _registry(live)
        yield from _gossip(live)


def _identity(live: _Live) -> Iterator[Metric]:
    config = live.config
    info = GaugeMetricFamily(
        "callmesh_node_info",
        "Always 1: this node's id, site, trust and whether it is a gateway.",
        labels=["node", "site", "trust", "gateway"],
    )
    info.add_metric(
        [config.node_id, config.site, config.trust.name.lower(), str(config.gateway).lower()], 1
    )
    yield info
    ready = GaugeMetricFamily(
        "callmesh_node_ready", "1 when /readyz answers 200 (lease held, synced).", labels=["site"]
    )
    ready.add_metric([config.site], 0 if live.readiness.reasons_not_ready() else 1)
    yield ready
    lease = GaugeMetricFamily(
        "callmesh_etcd_lease_held",
        "1 while this node holds a live etcd lease; 0 while it is fenced.",
        labels=["site"],
    )
    lease.add_metric([config.site], 1 if live.etcd.has_lease else 0)
    yield lease


def _agents(live: _Live) -> Iterator[Metric]:
    counts: dict[tuple[str, str], int] = {}
    tiers: set[str] = set()
    node_id = live.registry.node_id
    for record in live.registry.agents():
        if record.home_node != node_id:
            continue  # each agent is counted by its home node only: sums across nodes hold
        tier = str(record.tier)
        tiers.add(tier)
        key = (state_label(record.state), tier)
        counts[key] = counts.get(key, 0) + 1
    family = GaugeMetricFamily(
        "callmesh_agents",
        "Agents homed on this node (their session is held here), by site, state and tier.",
        labels=["site", "state", "tier"],
    )
    for tier in sorted(tiers):
        for state in AgentState:
            label = state_label(state)
            family.add_metric([live.config.site, label, tier], counts.get((label, tier), 0))
    yield family


def _queues(live: _Live) -> Iterator[Metric]:
    waiting = GaugeMetricFamily(
        "callmesh_calls_waiting",
        "Calls waiting now in this node's queues (from the queue summaries it publishes).",
        labels=["site", "queue"],
    )
    oldest = GaugeMetricFamily(
        "callmesh_calls_oldest_wait_seconds",
        "How long the oldest call waiting in each of this node's queues has waited.",
        labels=["site", "queue"],
    )
    now_ms = wall_ms()
    node_id = live.registry.node_id
    for summary in sorted(live.registry.queues(), key=lambda q: q.key):
        if summary.node != node_id:
            continue
        labels = [live.config.site, summary.queue]
        waiting.add_metric(labels, summary.waiting)
        age_ms = (
            now_ms - summary.oldest_since_ms if summary.waiting and summary.oldest_since_ms else 0
        )
        oldest.add_metric(labels, max(0, age_ms) / 1000)
    yield waiting
    yield oldest


def _registry(live: _Live) -> Iterator[Metric]:
    registry = live.registry
    entries = GaugeMetricFamily(
        "callmesh_registry_entries",
        "Entries in this node's registry replica (every site's), by kind.",
        labels=["kind"],
    )
    entries.add_metric(["agents"], len(registry.agents()))
    entries.add_metric(["queues"], len(registry.queues()))
    entries.add_metric(["nodes"], len(registry.nodes()))
    yield entries
    refused = CounterMetricFamily(
        "callmesh_registry_clock_refused",
        "Peer batches refused because a timestamp was too far ahead of this node's clock.",
    )
    refused.add_metric([], registry.clock.refused)
    yield refused


def _gossip(live: _Live) -> Iterator[Metric]:
    gossip = live.gossip
    sent = CounterMetricFamily(
        "callmesh_gossip_bytes",
        "Protobuf bytes of gossip this node's sync loops sent (requests) and received (replies).",
        labels=["direction"],
    )
    sent.add_metric(["sent"], gossip.bytes_out)
    sent.add_metric(["received"], gossip.bytes_in)
    yield sent
    remote = set(live.config.remote_gateways)
    counts = {(scope, state): 0 for scope in ("site", "remote") for state in ("synced", "unsynced")}
    for address, peer in gossip.peers.items():
        scope = "remote" if address in remote else "site"
        counts[scope, "synced" if peer.synced else "unsynced"] += 1
    peers = GaugeMetricFamily(
        "callmesh_gossip_peers",
        "This node's gossip peers: in its site or other sites' gateways (scope), by whether the "
        "last sync with each succeeded (state).",
        labels=["site", "scope", "state"],
    )
    for (scope, state), count in sorted(counts.items()):
        peers.add_metric([live.config.site, scope, state], count)
    yield peers


_COLLECTOR = LiveCollector()
REGISTRY.register(_COLLECTOR)


def install(
    config: NodeConfig,
    registry: Registry,
    gossip: GossipView,
    etcd: LeaseView,
    readiness: ReadinessView,
) -> None:
    """Serve this node's live figures on /metrics (a later call replaces an earlier one)."""
    _COLLECTOR.attach(_Live(config, registry, gossip, etcd, readiness))


def uninstall() -> None:
    _COLLECTOR.attach(None)


def exposition() -> tuple[bytes, str]:
    """The body and content type of GET /metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
