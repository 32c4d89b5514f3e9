"""The node's configuration: one frozen dataclass, loaded from a TOML file plus environment.

Every field may be overridden by an environment variable `CALLMESH_<FIELD>` (upper case; lists
comma-separated; booleans true/false). Values are validated with errors that name the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import InvalidRecord
from registry.records import Trust, check_id

ENV_PREFIX = "CALLMESH_"
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


class ConfigError(ValueError):
    code = "config_invalid"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What one node needs to know. Defaults suit production timers; see `for_tests()`."""

    node_id: str
    """This node's id, unique in the cluster (letters, digits, ._:@-)."""
    site: str
    """The site (office or partner) the node runs in."""
    etcd_endpoints: tuple[str, ...]
    """Client URLs of the site's etcd members, e.g. http://10.0.0.5:2379."""
    trust: Trust = Trust.INHOUSE
    """inhouse or partner: what the site may see and do."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    """The HTTP API (health, registry view, agent sessions); 0 picks a free port."""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 7070
    """Node-to-node gRPC; 0 picks a free port."""
    gateway: bool = False
    """Whether this node carries gossip to and from the other sites."""
    remote_gateways: tuple[str, ...] = ()
    """host:port of the other sites' gateway nodes (used when `gateway`)."""
    lease_ttl_s: int = 10
    """The node's etcd lease; a dead node's agents go offline after about this long."""
    digest_interval_s: float = 2.0
    """How often a node compares digests with each peer (anti-entropy)."""
    push_delay_s: float = 0.01
    """How long a change waits for others to share its delta push."""
    rpc_timeout_s: float = 2.0
    """Deadline of one node-to-node call."""
    max_clock_ahead_ms: int = 500
    """Remote timestamps further ahead of the local clock are refused."""
    event_loop: str = "uvloop"
    """uvloop or asyncio."""
    drain_timeout_s: float = 600.0
    """On SIGTERM, how long calls in progress may go on (no new ones taken) before the node
    leaves anyway; Kubernetes' grace period must be longer."""
    data_dir: str = "callmesh-data"
    """Where the node keeps its call records (SQLite); a relative path is under the cwd."""
    crm: str = ""
    """Customer records for the screen pop: empty for the embedded SQLite directory with sample
    customers (in data_dir), or "script:PROGRAM ARG..." for an operator's program (no shell)."""
    queues_file: str = ""
    """The queue configuration (TOML, reloaded on change); empty: the built-in sample queues."""
    fault_injection: bool = False
    """Serve POST /debug/faults, which cuts gossip links (for tests and chaos runs only)."""

    def __post_init__(self) -> None:
        for name in ("node_id", "site"):
            try:
                check_id(name, getattr(self, name))
            except InvalidRecord as error:
                raise ConfigError(str(error)) from None
        if not self.etcd_endpoints:
            raise ConfigError("etcd_endpoints: at least one etcd client URL is needed")
        for url in self.etcd_endpoints:
            if not _URL.fullmatch(url):
                raise ConfigError(f"etcd_endpoints: {url!r} is not an http(s)://host:port URL")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: {port} is not a port number (0-65535)")
        for address in self.remote_gateways:
            if not _ADDRESS.fullmatch(address):
                raise ConfigError(f"remote_gateways: {address!r} is not host:port")
        if not 1 <= self.lease_ttl_s <= 300:
            raise ConfigError(f"lease_ttl_s: {self.lease_ttl_s} is not in 1-300")
        for name in ("digest_interval_s", "push_delay_s", "rpc_timeout_s", "drain_timeout_s"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                raise ConfigError(f"{name}: {value} is not in 0-3600 seconds")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"event_loop: {self.event_loop!r} is not uvloop or asyncio")

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @classmethod
    def for_tests(cls, node_id: str, site: str, etcd_endpoints: tuple[str, ...]) -> NodeConfig:
        """Loopback, free ports, fast timers."""
        return cls(
            node_id=node_id,
            site=site,
            etcd_endpoints=etcd_endpoints,
            http_port=0,
            grpc_port=0,
            lease_ttl_s=2,
            digest_interval_s=0.5,
            push_delay_s=0.005,
            rpc_timeout_s=1.0,
            fault_injection=True,
        )

    @classmethod
    def load(cls, path: Path | None, environ: Mapping[str, str] = os.environ) -> NodeConfig:
        """The file at `path` (TOML), then CALLMESH_* environment variables over it."""
        raw: dict[str, Any] = {}
        if path is not None:
            try:
                raw = tomllib.loads(path.read_text())
            except OSError as error:
                raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        for name in _FIELDS:
            value = environ.get(ENV_PREFIX + name.upper())
            if value is not None:
                raw[name] = value
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> NodeConfig:
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        missing = [n for n in ("node_id", "site", "etcd_endpoints") if n not in raw]
        if missing:
            raise ConfigError(f"missing config keys: {', '.join(missing)}")
        return cls(**{name: _convert(name, value) for name, value in raw.items()})


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _convert(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise TypeError("a list of strings")
            return tuple(i.strip() for i in items if i.strip())
        if kind == "Trust":
            return Trust[str(value).upper()]
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise TypeError("true or false")
        if kind == "int":
            if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value).strip()):
                raise TypeError("an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool) or not re.fullmatch(r"-?\d+(\.\d*)?", str(value).strip()):
                raise TypeError("a number")
            return float(value)
        if not isinstance(value, str):
            raise TypeError("a string")
        return value
    except KeyError:
        raise ConfigError(f"{name}: {value!r} is not one of inhouse, partner") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {value!r} is not {error}") from None
