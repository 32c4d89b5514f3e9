"""A local cluster on loopback: an etcd child process per site and a child process per node.

`callmesh up`, the cluster tests and the gossip benchmark use it. Three sites by default:
site-a and site-b in-house with two nodes each, partner-c a partner site with one node. The first
node of each site is its gateway to the other sites' gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from node.ca import CA_CERT, init_ca, issue
from node.entries import sample_entries_toml, shipped_hooks_dir
from node.etcd_server import EtcdServer, free_port
from node.netns import SiteNamespaces
from node.queues import DEFAULT_QUEUES_TOML
from node.sampleusers import LocalCredentials
from registry.records import Trust


@dataclass(frozen=True, slots=True)
class SitePlan:
    name: str
    trust: str
    nodes: int
    etcd_members: int = 1


DEFAULT_SITES = (
    SitePlan("site-a", "inhouse", 2),
    SitePlan("site-b", "inhouse", 2),
    SitePlan("partner-c", "partner", 1),
)


def plan_sites(count: int) -> list[SitePlan]:
    if count < 1:
        raise ValueError(f"--sites must be at least 1, got {count}")
    extra = [SitePlan(f"site-{i + 1}", "inhouse", 1) for i in range(len(DEFAULT_SITES), count)]
    return [*DEFAULT_SITES[:count], *extra]


@dataclass(frozen=True, slots=True)
class NodePlan:
    node_id: str
    site: SitePlan
    http_port: int
    grpc_port: int
    gateway: bool
    host: str = "127.0.0.1"
    """What the node binds (HTTP, gRPC, media): loopback, or its site's address in the site's
    network namespace."""

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    def toml(
        self,
        etcd_urls: list[str],
        remote_gateways: list[str],
        fast: bool,
        data_dir: Path,
        queues_file: Path | None = None,
    ) -> str:
        quoted = ", ".join(f'"{g}"' for g in remote_gateways)
        endpoints = ", ".join(f'"{url}"' for url in etcd_urls)
        lines = [
            f'node_id = "{self.node_id}"',
            f'site = "{self.site.name}"',
            f'trust = "{self.site.trust}"',
            f"etcd_endpoints = [{endpoints}]",
            f"http_port = {self.http_port}",
            f"grpc_port = {self.grpc_port}",
            f"gateway = {'true' if self.gateway else 'false'}",
            f"remote_gateways = [{quoted}]",
            f'data_dir = "{data_dir}"',
            f'media_host = "{self.host}"',
        ]
        if self.host != "127.0.0.1":
            lines += [f'http_host = "{self.host}"', f'grpc_host = "{self.host}"']
        if queues_file is not None:
            lines.append(f'queues_file = "{queues_file}"')
        if fast:
            lines += [
                "lease_ttl_s = 2",
                "digest_interval_s = 0.5",
                "push_delay_s = 0.005",
                "fault_injection = true",
                "drain_timeout_s = 10",
            ]
        return "\n".join(lines) + "\n"


def local_trunk_toml() -> str:
    """Config lines for a node that serves SIP to a trunk on loopback (SIPp in the tests, `up`):
    a free SIP port, 127.0.0.1 allowed, 50 RTP ports."""
    rtp = free_port() & ~1
    return (
        f"sip_port = {free_port()}\n"
        'sip_trunks = ["127.0.0.1"]\n'
        f"rtp_port_min = {rtp}\nrtp_port_max = {rtp + 100}\n"
    )


def plan_nodes(sites: list[SitePlan], hosts: Mapping[str, str] | None = None) -> list[NodePlan]:
    """Every node's ports (and host: `hosts` maps a site to its address, else loopback)."""
    hosts = hosts or {}
    return [
        NodePlan(
            f"{site.name}-n{i + 1}",
            site,
            free_port(),
            free_port(),
            gateway=i == 0,
            host=hosts.get(site.name, "127.0.0.1"),
        )
        for site in sites
        for i in range(site.nodes)
    ]


class LocalCluster:
    """`async with LocalCluster(sites, root)`: every etcd and node started; all stopped on exit."""

    def __init__(
        self,
        sites: list[SitePlan],
        root: Path,
        *,
        fast: bool = False,
        queues_toml: str | None = None,
        wan_delay_ms: float = 0.0,
        extra_toml: Mapping[str, str] | None = None,
        tls: bool = True,
        netns: bool = False,
    ) -> None:
        self.sites = sites
        self.namespaces = SiteNamespaces.for_sites([s.name for s in sites]) if netns else None
        """With `netns`: each site's etcd and nodes run in the site's own network namespace at
        the site's address (node/netns.py), built on entry and removed on exit; the chaos
        nemesis cuts links between sites there. Root only."""
        self.pki = root / "pki" if tls else None
        """Mutual TLS between the nodes: the CA and every node's certificate (node/ca.py)."""
        if self.pki is not None:
            init_ca(self.pki)
        self.extra_toml = dict(extra_toml or {})  # node id -> more config lines (e.g. SIP)
        self.credentials = LocalCredentials(root, sites={s.name: s.trust for s in sites}, fast=fast)
        """The users file (admin, supervisor, sample agents), a signing key per site, tokens:
        `cluster.credentials.headers()` is an admin's Authorization header."""
        self.wan_delay_ms = wan_delay_ms  # one way, between nodes of different sites (node/wan.py)
        if queues_toml is None:  # the sample queues and the awk menu at entry point "main"
            queues_toml = DEFAULT_QUEUES_TOML + sample_entries_toml(shipped_hooks_dir())
        self.queues_file: Path | None = root / "queues.toml"
        self.queues_file.write_text(queues_toml)
        self.root = root
        self.fast = fast
        hosts = {s.site: s.address for s in self.namespaces.plan.sites} if self.namespaces else None
        self.plans = {plan.node_id: plan for plan in plan_nodes(sites, hosts)}
        self.etcds: dict[str, list[EtcdServer]] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.banners: dict[str, str] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> LocalCluster:
        try:
            if self.namespaces is not None:  # removed last, once every process has stopped
                await self._stack.enter_async_context(self.namespaces)
            for site in self.sites:
                await self._start_etcd(site)
            self._stack.push_async_callback(self._stop_all_nodes)
            for node_id in self.plans:
                await self.start_node(node_id, wait=False)
            for node_id in self.plans:
                await self._await_banner(node_id)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start_etcd(self, site: SitePlan) -> None:
        """The site's etcd members, started together (a cluster needs a quorum to be healthy)."""
        names = [f"{site.name}-etcd{i + 1}" for i in range(site.etcd_members)]
        host = self._host(site.name)
        peers = {name: f"http://{host}:{free_port()}" for name in names}
        members = [
            EtcdServer(
                name,
                self.root / name,
                host=host,
                client_port=free_port(),  # planned on loopback: a namespace's ports are all free
                peer_port=int(peers[name].rsplit(":", 1)[1]),
                cluster=peers,
                prefix=self._prefix(site.name),
            )
            for name in names
        ]
        self.etcds[site.name] = members
        for member in members:
            self._stack.push_async_callback(member.stop)
        await asyncio.gather(*(m.start() for m in members))
        await asyncio.gather(*(m.wait_healthy() for m in members))

    def _host(self, site: str) -> str:
        return "127.0.0.1" if self.namespaces is None else self.namespaces.address(site)

    def _prefix(self, site: str) -> list[str]:
        """What runs a command in the site's namespace (nothing without namespaces)."""
        return [] if self.namespaces is None else self.namespaces.prefix(site)

    def etcd_urls(self, site: str) -> list[str]:
        return [member.client_url for member in self.etcds[site]]

    def config_path(self, node_id: str) -> Path:
        return self.root / f"{node_id}.toml"

    def log_path(self, node_id: str) -> Path:
        return self.root / f"{node_id}.log"

    async def start_node(self, node_id: str, *, wait: bool = True) -> None:
        """Start (or restart) a node's process with its planned config."""
        plan = self.plans[node_id]
        dials_any = plan.site.trust == "partner"  # in-house gateways dial in-house ones only
        gateways = [
            p.grpc
            for p in self.plans.values()
            if p.gateway and p.site != plan.site and (dials_any or p.site.trust == "inhouse")
        ]
        etcd_urls = self.etcd_urls(plan.site.name)
        data_dir = self.root / f"{node_id}-data"
        config = plan.toml(etcd_urls, gateways, self.fast, data_dir, self.queues_file)
        config += self.credentials.toml(plan.site.name) + self._tls_toml(plan)
        config += self.extra_toml.get(node_id, "")
        if self.wan_delay_ms:
            others = ", ".join(f'"{p.grpc}"' for p in self.plans.values() if p.site != plan.site)
            config += f"wan_delay_ms = {self.wan_delay_ms}\nwan_peers = [{others}]\n"
        self.config_path(node_id).write_text(config)
        with self.log_path(node_id).open("ab") as log:
            self.processes[node_id] = await asyncio.create_subprocess_exec(
                *self._prefix(plan.site.name),  # `ip netns exec` execs: the pid is the node's
                sys.executable,
                "-m",
                "node",
                "node",
                "--config",
                str(self.config_path(node_id)),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops nodes in order
            )
        if wait:
            await self._await_banner(node_id)

    def _tls_toml(self, plan: NodePlan) -> str:
        """The node's certificate (issued once) and the partner scopes: a partner site may
        reserve agents of every in-house site of the local cluster (for escalations)."""
        inhouse = [s.name for s in self.sites if s.trust == "inhouse"]
        partners = [s.name for s in self.sites if s.trust == "partner"]
        scopes = [f"{partner}={site}" for partner in partners for site in inhouse]
        quoted = ", ".join(f'"{scope}"' for scope in scopes)
        lines = f"partner_scopes = [{quoted}]\n"
        if self.pki is None:
            return lines
        cert, key = self.pki / f"{plan.node_id}.pem", self.pki / f"{plan.node_id}.key"
        if not cert.exists():
            issue(self.pki, plan.node_id, plan.site.name, Trust[plan.site.trust.upper()])
        return lines + f'tls_ca = "{self.pki / CA_CERT}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'

    async def _await_banner(self, node_id: str, timeout_s: float = 30.0) -> None:
        process = self.processes[node_id]
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
        except TimeoutError:
            line = b""
        if not line:
            raise RuntimeError(
                f"node {node_id} did not start (exit code {process.returncode}); "
                f"see {self.log_path(node_id)}"
            )
        self.banners[node_id] = line.decode().strip()

    def pid(self, node_id: str) -> int:
        return self.processes[node_id].pid

    def signal(self, node_id: str, sig: signal.Signals) -> None:
        process = self.processes[node_id]
        if process.returncode is None:
            os.kill(process.pid, sig)

    async def stop_node(self, node_id: str, timeout_s: float = 15.0) -> int:
        """SIGTERM (a clean leave), then SIGKILL after `timeout_s`; the exit code."""
        process = self.processes[node_id]
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)  # a paused node cannot leave
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode

    async def kill_node(self, node_id: str) -> None:
        process = self.processes[node_id]
        if process.returncode is None:
            process.kill()
            await process.wait()

    async def _stop_all_nodes(self) -> None:
        await asyncio.gather(*(self.stop_node(node_id) for node_id in self.processes))
