"""Node configuration: file plus environment, validated with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, NodeConfig
from registry.records import Trust

GOOD = """
node_id = "site-a-n1"
site = "site-a"
trust = "partner"
etcd_endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
grpc_port = 7001
gateway = true
remote_gateways = ["127.0.0.1:7101"]
"""


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(GOOD)
    config = NodeConfig.load(path, {"CALLMESH_GRPC_PORT": "7002", "CALLMESH_LEASE_TTL_S": "7"})
    assert config.node_id == "site-a-n1"
    assert config.trust is Trust.PARTNER
    assert config.etcd_endpoints == ("http://127.0.0.1:2379", "http://127.0.0.1:2380")
    assert config.grpc_port == 7002
    assert config.lease_ttl_s == 7
    assert config.gateway is True
    assert config.remote_gateways == ("127.0.0.1:7101",)


def test_environment_alone_with_comma_lists() -> None:
    config = NodeConfig.load(
        None,
        {
            "CALLMESH_NODE_ID": "n1",
            "CALLMESH_SITE": "s",
            "CALLMESH_ETCD_ENDPOINTS": "http://a:1, http://b:2",
            "CALLMESH_GATEWAY": "false",
        },
    )
    assert config.etcd_endpoints == ("http://a:1", "http://b:2")
    assert config.gateway is False


def test_for_tests_uses_free_ports_and_fast_timers() -> None:
    config = NodeConfig.for_tests("n1", "s", ("http://127.0.0.1:1",))
    assert config.http_port == 0
    assert config.grpc_port == 0
    assert config.lease_ttl_s <= 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"site": "s", "etcd_endpoints": ["http://a:1"]}, "missing config keys: node_id"),
        ({"node_id": "n 1", "site": "s", "etcd_endpoints": ["http://a:1"]}, "node_id must be"),
        ({"node_id": "n", "site": "s", "etcd_endpoints": []}, "at least one etcd"),
        ({"node_id": "n", "site": "s", "etcd_endpoints": ["a:1"]}, "not an http"),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "grpc_port": 70000},
            "grpc_port: 70000 is not a port",
        ),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "lease_ttl_s": "x"},
            "lease_ttl_s: 'x' is not an integer",
        ),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "trust": "friend"},
            "trust: 'friend' is not one of inhouse, partner",
        ),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "gateway": "maybe"},
            "gateway: 'maybe' is not true or false",
        ),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "colour": "red"},
            "unknown config keys: colour",
        ),
        (
            {
                "node_id": "n",
                "site": "s",
                "etcd_endpoints": "http://a:1",
                "remote_gateways": ["nope"],
            },
            "remote_gateways: 'nope' is not host:port",
        ),
        (
            {"node_id": "n", "site": "s", "etcd_endpoints": "http://a:1", "event_loop": "trio"},
            "event_loop",
        ),
    ],
)
def test_bad_values_name_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig.from_mapping(raw)


def test_unreadable_or_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        NodeConfig.load(tmp_path / "missing.toml", {})
    broken = tmp_path / "broken.toml"
    broken.write_text("node_id = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        NodeConfig.load(broken, {})
