"""The node's configuration: one frozen dataclass, loaded from a TOML file plus environment.

Every field may be overridden by an environment variable `CALLMESH_<FIELD>` (upper case; lists
comma-separated; booleans true/false). Values are validated with errors that name the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
    media_host: str = ""
    """The address of the node's media: its ICE host candidate for WebRTC legs and where
    node-to-node legs listen. Empty: ICE offers every non-loopback interface and node-to-node
    legs use grpc_host. Set it (e.g. 127.0.0.1) on loopback: aioice leaves 127.0.0.1 out of
    its candidates unless it is named here."""
    media_mode: str = "forward"
    """How bridged audio goes between legs: forward (RTP forwarded, headers rewritten),
    transcode (decoded and encoded again), stock (aiortc's own tracks; benchmarks only)."""
    max_cpu_share: float = 0.85
    max_media_calls: int = 0
    """Admission control: new calls bringing media (WebRTC callers, SIP INVITEs) are refused
    (503 node_overloaded, naming other nodes) while this process uses more than max_cpu_share
    of one core (0: no CPU limit), or carries max_media_calls media calls (0: no cap). Calls in
    progress go on."""
    fault_injection: bool = False
    """Serve POST /debug/faults, which cuts links to other nodes and skews the registry clock,
    and write the reservation log (data_dir/reservations.jsonl); for tests and chaos runs only."""
    wan_delay_ms: float = 0.0
    """Test-only WAN emulation: one-way delay added to node-to-node gRPC to `wan_peers`."""
    wan_peers: tuple[str, ...] = ()
    """host:port gRPC addresses of the nodes behind the emulated WAN (the other sites' nodes)."""
    users_file: str = ""
    """HTTP authentication (docs/SECURITY.md): the users file (TOML, scrypt password hashes).
    Empty: no authentication (development only). Needs `site_key` and `site_keys_file`."""
    site_key: str = ""
    """This site's private key (PEM, Ed25519; `callmesh ca site-key`), which signs the tokens
    the site's nodes issue and their revocation pushes; held by this site's nodes only (a
    Kubernetes Secret per site)."""
    site_keys_file: str = ""
    """Every site's trust and public key (TOML, node/sitekeys.py), the same file on every node:
    a token or push is checked against the key of the site that signed it."""
    token_ttl_s: int = 8 * 3600
    """How long a login token is valid."""
    caller_rate_per_s: float = 2.0
    caller_burst: int = 20
    """POST /calls without a staff token: a token bucket per client address; 0 turns it off."""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    """Mutual TLS between nodes (PEM files from `callmesh ca`): the CA certificate, this node's
    certificate (naming its node, site and trust) and key. All three or none (plain gRPC)."""
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    """TLS to the site's etcd (https:// endpoints): the site's etcd CA and this node's client
    certificate and key (etcd --client-cert-auth). All three or none."""
    partner_scopes: tuple[str, ...] = ()
    """Which sites' agents a partner site's nodes may reserve besides their own, as
    "PARTNER=SITE" pairs, e.g. ["partner-c=site-a"]; checked by the agent's home node."""
    sip_host: str = "127.0.0.1"
    sip_port: int = 0
    """SIP from a trunk (carrier or SBC) on UDP and TCP at sip_host:sip_port; 0: no SIP. The
    host is also written in SDP and Contact: it must be the address the trunk reaches."""
    sip_trunks: tuple[str, ...] = ()
    """Addresses or networks (CIDR) allowed to send SIP; everyone else gets 403."""
    sip_user: str = ""
    sip_password: str = ""
    """Digest credentials the trunk must present on INVITE (both or neither; set the password
    through CALLMESH_SIP_PASSWORD)."""
    sip_queue: str = "sales"
    """The queue calls from the trunk wait in (when no `sip_entry`)."""
    sip_entry: str = ""
    """The entry point (hook script, IVR) calls from the trunk arrive at, over `sip_queue`."""
    sip_numbers: tuple[str, ...] = ()
    """Dialled-number routing: "NUMBER=entry:NAME" or "NUMBER=queue:NAME" pairs, e.g.
    ["+4930100=entry:main", "+4930200=queue:support"]; a number not listed gets 404. Empty:
    every number goes to `sip_entry` (else `sip_queue`). Checked when SIP starts."""
    sip_answer: str = "agent"
    """When the trunk gets 200 OK: "agent" (when an agent answers; 180 with early media
    before) or "arrival" (at once)."""
    sip_outbound: str = ""
    """host:port of the trunk (SBC) calls out to agents' external phones go through; empty: no
    calls out (POST /agents/ID/phone refused)."""
    rtp_port_min: int = 20000
    rtp_port_max: int = 20999
    """The UDP ports of SIP calls' RTP legs (one even port per call), e.g. for host ports or a
    fixed range in Kubernetes."""

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
        if not 0 <= self.wan_delay_ms <= 10_000:
            raise ConfigError(f"wan_delay_ms: {self.wan_delay_ms} is not in 0-10000")
        for address in self.wan_peers:
            if not _ADDRESS.fullmatch(address):
                raise ConfigError(f"wan_peers: {address!r} is not host:port")
        if self.media_host:
            try:
                ipaddress.ip_address(self.media_host)
            except ValueError:
                raise ConfigError(
                    f"media_host: {self.media_host!r} is not an IP address (ICE candidates "
                    "name addresses, not host names)"
                ) from None
        if self.media_mode not in ("forward", "transcode", "stock"):
            raise ConfigError(f"media_mode: {self.media_mode!r} is not forward, transcode or stock")
        if not 0 <= self.max_cpu_share <= 1:
            raise ConfigError(f"max_cpu_share: {self.max_cpu_share} is not in [0, 1] (0: off)")
        if self.max_media_calls < 0:
            raise ConfigError(f"max_media_calls: {self.max_media_calls} must be >= 0")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"event_loop: {self.event_loop!r} is not uvloop or asyncio")
        self._check_sip()
        if self.users_file and not self.site_key:
            raise ConfigError(
                "site_key: users_file is set, so this site's private key file is needed "
                "(callmesh ca site-key)"
            )
        if self.users_file and not self.site_keys_file:
            raise ConfigError(
                "site_keys_file: users_file is set, so the file of every site's public key is "
                "needed (callmesh ca site-key)"
            )
        if not 60 <= self.token_ttl_s <= 7 * 86400:
            raise ConfigError(f"token_ttl_s: {self.token_ttl_s} is not in 60-604800 seconds")
        if self.caller_rate_per_s < 0 or self.caller_burst < 1:
            raise ConfigError("caller_rate_per_s must be >= 0 and caller_burst >= 1")
        tls = [self.tls_ca, self.tls_cert, self.tls_key]
        if any(tls) and not all(tls):
            raise ConfigError("tls_ca, tls_cert and tls_key: set all three or none")
        etcd_tls = [self.etcd_ca, self.etcd_cert, self.etcd_key]
        if any(etcd_tls) and not all(etcd_tls):
            raise ConfigError("etcd_ca, etcd_cert and etcd_key: set all three or none")
        https = [url.startswith("https://") for url in self.etcd_endpoints]
        if any(https) != all(etcd_tls) or (any(https) and not all(https)):
            raise ConfigError(
                "etcd_endpoints: https:// endpoints (all of them) go with etcd_ca, etcd_cert "
                "and etcd_key; http:// endpoints with none"
            )
        for pair in self.partner_scopes:
            partner, _, site = pair.partition("=")
            try:
                check_id("partner_scopes partner site", partner)
                check_id("partner_scopes site", site)
            except InvalidRecord as error:
                raise ConfigError(
                    f"partner_scopes: {pair!r} is not PARTNER=SITE: {error}"
                ) from None

    def _check_sip(self) -> None:
        if not 0 <= self.sip_port <= 65535:
            raise ConfigError(f"sip_port: {self.sip_port} is not a port number (0-65535)")
        if self.sip_port and not self.sip_trunks:
            raise ConfigError("sip_trunks: name the trunk addresses allowed to send SIP calls")
        for entry in self.sip_trunks:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"sip_trunks: {entry!r} is not an address or network") from None
        if self.sip_outbound and not _ADDRESS.fullmatch(self.sip_outbound):
            raise ConfigError(f"sip_outbound: {self.sip_outbound!r} is not host:port")
        if bool(self.sip_user) != bool(self.sip_password):
            raise ConfigError("sip_user and sip_password: set both or neither")
        if self.sip_answer not in ("agent", "arrival"):
            raise ConfigError(f"sip_answer: {self.sip_answer!r} is not agent or arrival")
        if not 1024 <= self.rtp_port_min < self.rtp_port_max <= 65535:
            raise ConfigError(
                f"rtp_port_min, rtp_port_max: {self.rtp_port_min}-{self.rtp_port_max} is not a "
                "range of ports within 1024-65535"
            )

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
