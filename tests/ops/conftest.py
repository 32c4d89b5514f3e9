from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from node import metrics
from node.config import NodeConfig
from registry.registry import Registry
from tests.ops.fakes import FakeGossip, FakeLease, FakeReadiness
from tests.ops.tools import exported_names


@pytest.fixture
def live() -> Iterator[tuple[Registry, FakeGossip, FakeLease, FakeReadiness]]:
    """A node's live objects, served by the metrics collector while the test runs."""
    config = NodeConfig.for_tests("site-a-n1", "site-a", ("http://127.0.0.1:2379",))
    config = dataclasses.replace(config, remote_gateways=("127.0.0.9:7070",))
    registry = Registry(config.node_id)
    gossip, lease, readiness = FakeGossip(), FakeLease(), FakeReadiness()
    metrics.install(config, registry, gossip, lease, readiness)
    yield registry, gossip, lease, readiness
    metrics.uninstall()


@pytest.fixture
def exported(live: object) -> set[str]:
    """Every series name a node's /metrics can hold."""
    return exported_names(metrics.exposition()[0].decode())
