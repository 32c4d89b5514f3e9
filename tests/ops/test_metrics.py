"""node/metrics.py: what the collector reads off a node, and the instruments' helpers."""

from __future__ import annotations

import dataclasses
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node import metrics
from registry.clock import pack, wall_ms
from registry.records import AgentRecord, AgentState, NodeInfo, QueueSummary, Trust
from registry.registry import Registry
from registry.sync import Delta
from tests.ops.fakes import FakeGossip, FakeLease, FakePeer, FakeReadiness

Live = tuple[Registry, FakeGossip, FakeLease, FakeReadiness]

ALLOWED_LABELS = {
    "site", "queue", "outcome", "result", "state", "tier", "kind", "hook", "operation", "source",
    "reason", "direction", "scope", "met", "node", "trust", "gateway", "version", "python",
    "method", "status_class",
}  # fmt: skip
"""Low-cardinality labels only; `node` appears on callmesh_node_info alone."""


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition()[0].decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(name: str, **labels: str) -> float:
    return samples()[name, frozenset(labels.items())]


def agent(agent_id: str, home: str, state: AgentState, tier: int = 1) -> AgentRecord:
    reason = "lunch" if state is AgentState.NOT_READY else ""
    return AgentRecord(agent_id, home, "site-a", Trust.INHOUSE, tier, (), state, reason, epoch=1)


def test_agents_are_counted_by_their_home_node_by_state_and_tier(live: Live) -> None:
    registry = live[0]
    registry.write_agent(agent("ann", "site-a-n1", AgentState.AVAILABLE))
    registry.write_agent(agent("bob", "site-a-n1", AgentState.NOT_READY, tier=2))
    registry.write_agent(agent("cy", "site-a-n1", AgentState.AVAILABLE))
    remote = Registry("site-b-n1")
    remote.write_agent(agent("dee", "site-b-n1", AgentState.AVAILABLE))
    registry.apply(remote.agents(), (), "site-b-n1")  # known here, homed elsewhere
    assert value("callmesh_agents", site="site-a", state="available", tier="1") == 2
    assert value("callmesh_agents", site="site-a", state="not-ready", tier="2") == 1
    assert value("callmesh_agents", site="site-a", state="talking", tier="1") == 0
    assert value("callmesh_registry_entries", kind="agents") == 4


def test_queue_summaries_give_waiting_calls_and_the_oldest_wait_at_scrape_time(
    live: Live,
) -> None:
    registry = live[0]
    registry.write_queue(QueueSummary("site-a-n1", "sales", 3, wall_ms() - 42_000, 1, ()))
    registry.write_queue(QueueSummary("site-a-n1", "support", 0, 0, 0, ()))
    assert value("callmesh_calls_waiting", site="site-a", queue="sales") == 3
    assert 41.5 < value("callmesh_calls_oldest_wait_seconds", site="site-a", queue="sales") < 60
    assert value("callmesh_calls_oldest_wait_seconds", site="site-a", queue="support") == 0


def test_node_identity_lease_readiness_and_gossip_peers(live: Live) -> None:
    registry, gossip, lease, readiness = live
    gossip.peers = {
        "127.0.0.2:7070": FakePeer(synced=True),
        "127.0.0.3:7070": FakePeer(synced=False),
        "127.0.0.9:7070": FakePeer(synced=False),  # a remote gateway (config.remote_gateways)
    }
    gossip.bytes_out, gossip.bytes_in = 1234, 567
    node = {"node": "site-a-n1", "site": "site-a", "trust": "inhouse", "gateway": "false"}
    assert value("callmesh_node_info", **node) == 1
    assert value("callmesh_node_ready", site="site-a") == 1
    assert value("callmesh_etcd_lease_held", site="site-a") == 1
    lease.has_lease = False
    readiness.reasons = ["no etcd lease"]
    assert value("callmesh_etcd_lease_held", site="site-a") == 0
    assert value("callmesh_node_ready", site="site-a") == 0
    peers = {(s, st): value("callmesh_gossip_peers", site="site-a", scope=s, state=st)
             for s in ("site", "remote") for st in ("synced", "unsynced")}  # fmt: skip
    assert peers == {
        ("site", "synced"): 1,
        ("site", "unsynced"): 1,
        ("remote", "synced"): 0,
        ("remote", "unsynced"): 1,
    }
    assert value("callmesh_gossip_bytes_total", direction="sent") == 1234
    assert value("callmesh_gossip_bytes_total", direction="received") == 567
    registry.clock.refused = 2
    assert value("callmesh_registry_clock_refused_total") == 2


def test_nothing_is_served_from_a_node_that_is_not_installed(live: Live) -> None:
    metrics.uninstall()
    assert not [name for name, _ in samples() if name.startswith("callmesh_agents")]
    assert value("callmesh_build_info", version=metrics._version(), python=_python()) == 1


def test_pushed_deltas_time_the_convergence_lag_and_loose_entries_do_not() -> None:
    lag = metrics.GOSSIP_LAG
    before_count = _histogram_count("callmesh_gossip_convergence_lag_seconds")
    before_merged = value("callmesh_registry_merged_entries_total")
    written = pack(wall_ms() - 250)
    info = NodeInfo("site-b-n1", "site-b", Trust.INHOUSE, "127.0.0.1:1", "127.0.0.1:2", False)
    record = dataclasses.replace(info, clock=written)
    metrics.gossip_applied(Delta("site-b-n1", 3, 4, nodes=(record,)), changed=1)
    metrics.gossip_applied(Delta("site-b-n1", 0, 0, nodes=(record,)), changed=1)  # loose
    metrics.gossip_applied(Delta("site-b-n1", 4, 5, nodes=(record,)), changed=0)  # no change
    assert _histogram_count("callmesh_gossip_convergence_lag_seconds") == before_count + 1
    assert value("callmesh_registry_merged_entries_total") == before_merged + 2
    assert lag is metrics.GOSSIP_LAG
    assert _histogram_sum_at_least("callmesh_gossip_convergence_lag_seconds", 0.25)


@pytest.mark.parametrize(
    ("what", "operation"),
    [
        ("get /callmesh/sites/a/agents/ann/epoch", "get"),
        ("get /callmesh/sites/a/nodes/*", "range"),
        ("put /callmesh/sites/a/nodes/n1", "put"),
        ("delete /callmesh/sites/a/nodes/n1", "delete"),
        ("put /callmesh/sites/a/agents/ann/epoch if at revision 7", "txn"),
        ("delete /callmesh/x if at revision 7", "txn"),
        ("lease grant", "lease_grant"),
        ("lease 77 keep-alive", "lease_keepalive"),
        ("lease 77 revoke", "lease_revoke"),
        ("compact", "other"),
    ],
)
def test_etcd_operations_are_labelled_from_the_request_description(
    what: str, operation: str
) -> None:
    assert metrics.etcd_operation(what) == operation


class _Unavailable(Exception):
    code = "etcd_unavailable"


class _FakeAdapter:
    @metrics.timed_etcd_request
    async def request(self, what: str, fail: bool) -> int:
        if fail:
            raise _Unavailable(what)
        return 7


async def test_etcd_requests_are_timed_by_operation_and_outcome() -> None:
    def count(outcome: str) -> float:
        labels = frozenset({"operation": "get", "outcome": outcome}.items())
        return samples().get(("callmesh_etcd_request_duration_seconds_count", labels), 0.0)

    ok, failed = count("ok"), count("etcd_unavailable")
    adapter = _FakeAdapter()
    assert await adapter.request("get /k", False) == 7
    with pytest.raises(_Unavailable):
        await adapter.request("get /k", True)
    assert count("ok") == ok + 1
    assert count("etcd_unavailable") == failed + 1


def test_every_metric_is_named_with_the_project_prefix_and_low_cardinality_labels(
    live: Live,
) -> None:
    live[0].write_agent(agent("ann", "site-a-n1", AgentState.AVAILABLE))
    text = metrics.exposition()[0].decode()
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("callmesh")]
    assert len(families) >= 30
    for family in families:
        assert re.fullmatch(r"callmesh_[a-z0-9_]+", family.name), family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, (family.name, sample.labels)
            if "node" in sample.labels:
                assert family.name == "callmesh_node_info"
    declared = {
        label
        for instrument in vars(metrics).values()
        if hasattr(instrument, "_labelnames")
        for label in instrument._labelnames
    }
    assert declared <= ALLOWED_LABELS


def _python() -> str:
    import platform

    return platform.python_version()


def _histogram_count(name: str) -> float:
    return samples().get((f"{name}_count", frozenset()), 0.0)


def _histogram_sum_at_least(name: str, seconds: float) -> bool:
    return samples().get((f"{name}_sum", frozenset()), 0.0) >= seconds
