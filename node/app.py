"""The node's composition root: builds every part from the config and runs them until stopped.

Start order: gossip server (so peers can reach us), etcd (lease), HTTP, then membership and the
session watch. Stop order (SIGTERM, Ctrl-C): agents logged out and pushed to peers, membership
key removed, lease revoked, servers stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from node import metrics
from node.admission import Admission, CpuMeter, Limits
from node.agentdesk import AgentDesk
from node.auth import auth_from
from node.ca import CaError
from node.calls_api import add_call_routes
from node.calls_rpc import CallsServicer, NodeLink, PeerRules
from node.callstate import Call
from node.cdr import CallRecords
from node.config import ConfigError, NodeConfig
from node.crm import SqliteDirectory, directory_from
from node.etcd import Etcd
from node.etcdtls import Credentials as EtcdCredentials
from node.etcdtls import credentials as etcd_credentials
from node.events import EventHub
from node.exchange import ReleaseReason
from node.faults import NodeFaults, SkewedClock
from node.gossip import Gossip, GossipTimers
from node.http_api import agent_json, make_app
from node.ivr import Ivr
from node.ivr_api import add_ivr_routes
from node.media_api import add_media_routes
from node.media_rpc import MediaLink, MediaServicer
from node.mediaplane import MediaPlane, MediaSettings
from node.membership import Member, Membership
from node.pages import add_page_routes
from node.peerpolicy import parse_scopes
from node.prompts import RecordingPrompter, shipped_prompts_dir
from node.queues import QueueFile
from node.reservationlog import FILE_NAME as RESERVATION_LOG
from node.reservationlog import ReservationLog
from node.revocation_rpc import RevocationLink, RevocationServicer
from node.revoker import Revoker
from node.sessions import Sessions
from node.switchboard import Switchboard
from node.tasks import Tasks
from node.transport import Tls, Transport
from node.wan import WanDelay
from protos.calls_pb2_grpc import add_CallsServicer_to_server, add_MediaServicer_to_server
from protos.revocations_pb2_grpc import add_RevocationsServicer_to_server
from registry.clock import HybridClock, wall_ms
from registry.records import NodeInfo
from registry.registry import Registry
from sip import RtpLeg, SipService, TrunkSettings, digest, parse_allowed
from sip.numbers import Route, parse_numbers
from sip.phone_api import add_phone_routes
from sip.phonebook import PhoneBook
from sip.transport import Peer

log = logging.getLogger(__name__)

LEAVE_FLUSH_S = 0.3
"""How long a leaving node keeps gossiping so peers get its agents' offline records."""


class Node:
    """One callmesh node. `run(stop)` serves until `stop` is set, then leaves cleanly."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.clock = SkewedClock()  # offset by POST /debug/faults (fault injection only)
        self.registry = Registry(
            config.node_id,
            HybridClock(
                self.clock if config.fault_injection else wall_ms,
                max_ahead_ms=config.max_clock_ahead_ms,
            ),
        )
        self.desk: AgentDesk | None = None
        self.switchboard: Switchboard | None = None
        self.media: MediaPlane | None = None
        self.revoker: Revoker | None = None  # with authentication on
        self.sip: SipService | None = None  # the SIP trunk side, when sip_port is set
        wan = WanDelay(config.wan_delay_ms, frozenset(config.wan_peers))
        self.transport = Transport(wan=wan if config.wan_delay_ms else None, tls=_tls(config))
        rules = PeerRules(
            self.transport,
            config.site,
            parse_scopes(config.partner_scopes),
            self.registry,
            self._offer_owner,
        )
        servicer = CallsServicer(lambda: self.desk, lambda: self.switchboard, rules, met=self._met)
        media_servicer = MediaServicer(lambda: self.media, rules)
        revocation_servicer = RevocationServicer(
            lambda: self.revoker, bool(config.users_file), self.transport
        )
        self.gossip = Gossip(
            self.registry,
            config.grpc_host,
            config.grpc_port,
            GossipTimers(config.digest_interval_s, config.push_delay_s, config.rpc_timeout_s),
            services=[
                lambda server: add_CallsServicer_to_server(servicer, server),
                lambda server: add_MediaServicer_to_server(media_servicer, server),
                lambda server: add_RevocationsServicer_to_server(revocation_servicer, server),
            ],
            transport=self.transport,
        )
        self._tasks = Tasks(f"node {config.node_id}")
        self._etcd: Etcd | None = None
        self._sessions: Sessions | None = None
        self._membership: Membership | None = None
        self._watching = False
        self.draining = False
        self.http_address = ""

    @property
    def sessions(self) -> Sessions | None:
        return self._sessions

    # -- readiness -------------------------------------------------------------------------------

    def reasons_not_ready(self) -> list[str]:
        reasons = (
            ["draining: finishing calls in progress, taking no new ones"] if (self.draining) else []
        )
        if self._etcd is None or not self._etcd.has_lease:
            reasons.append("no etcd lease")
        if not self._watching:
            reasons.append("membership not read yet")
        if not self.gossip.synced():
            behind = sorted(p.address for p in self.gossip.peers.values() if not p.synced)
            reasons.append(f"not synced with {', '.join(behind)}")
        return reasons

    def _met(self, node_id: str) -> None:
        """A node called this one with a reservation: when the registry does not know its
        address yet, ask the gossip peers now (the agent's answer goes to that address)."""
        if self.registry.node(node_id) is None:
            log.info("node %s not known yet: exchanging digests now", node_id)
            self.gossip.reconcile_soon()

    # -- lease callbacks (called by the etcd adapter) ----------------------------------------------

    def _lease_lost(self) -> None:
        log.warning("node %s lost its etcd lease: fenced", self.config.node_id)
        if self._sessions is not None:
            self._sessions.fence()

    def _lease_granted(self, lease_id: int) -> None:
        if self._membership is None or self._sessions is None:
            return  # the first lease: run() registers
        self._tasks.spawn(self._rejoin(), "rejoin")

    async def _rejoin(self) -> None:
        assert self._membership is not None
        assert self._sessions is not None
        await self._membership.register()
        self._sessions.unfence()
        log.info("node %s holds a new lease: unfenced", self.config.node_id)

    def _peers_changed(self, members: dict[str, Member]) -> None:
        self._watching = True
        peers = {m.grpc for node_id, m in members.items() if node_id != self.config.node_id}
        if self.config.gateway:
            peers |= set(self.config.remote_gateways)
        self.gossip.set_peers(peers)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.gossip)
            etcd = Etcd(
                config.etcd_endpoints,
                lease_ttl_s=config.lease_ttl_s,
                on_lease_lost=self._lease_lost,
                on_lease_granted=self._lease_granted,
                tls=_etcd_tls(config),
            )
            self._etcd = await stack.enter_async_context(etcd)
            metrics.install(config, self.registry, self.gossip, etcd, self)
            hub = EventHub()
            sessions = Sessions(
                etcd,
                self.registry,
                config.site,
                config.trust,
                on_write=self.gossip.changed,
                on_available=self._agent_available,
                on_agent=lambda record: hub.publish(
                    record.agent_id, {"type": "state", "agent": agent_json(record)}
                ),
            )
            data_dir = Path(config.data_dir)
            await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
            records = CallRecords(data_dir / "calls.db")
            stack.callback(records.close)
            orphans = records.close_orphans(wall_ms(), "node restarted while the call was live")
            if orphans:
                log.warning(
                    "node %s closed %d calls left open as failed", config.node_id, len(orphans)
                )
            queue_file = _queue_file(config.queues_file)
            queues = queue_file.current
            link = NodeLink(self.registry, config.rpc_timeout_s, self.transport)
            stack.push_async_callback(link.close)
            reservations = (
                ReservationLog(data_dir / RESERVATION_LOG) if config.fault_injection else None
            )
            desk = AgentDesk(etcd, self.registry, sessions, link, queues, hub, reservations)
            customers = directory_from(config.crm, data_dir)
            if isinstance(customers, SqliteDirectory):
                stack.callback(customers.close)
            board = Switchboard(
                self.registry,
                config.site,
                records,
                link,
                queues,
                self.gossip.changed,
                customers,
                rpc_timeout_s=config.rpc_timeout_s,
            )
            stack.push_async_callback(desk.close)
            stack.push_async_callback(board.close)
            ivr = Ivr(board, queue_file.entries, records, RecordingPrompter(records), config.site)
            stack.push_async_callback(ivr.close)
            board.entries = ivr  # calls at an entry point go to its hook first
            board.observers.append(ivr.observe)
            link.local_desk, link.local_owner = desk, board
            self.desk, self.switchboard = desk, board
            media = _media(config, self, board, desk, sessions, records, queue_file)
            self.media = await stack.enter_async_context(media)
            admission = _admission(config, self.registry, self.media)
            book = PhoneBook(etcd, config.site)
            if config.sip_port:
                sip = _sip(config, board, records, hub, desk, ivr.digits, admission.check)
                self.sip = await stack.enter_async_context(sip)
            faults = NodeFaults(self.gossip, link, self.clock) if config.fault_injection else None
            auth = auth_from(
                config.users_file,
                (config.site, config.site_key, config.site_keys_file),
                config.token_ttl_s,
                config.caller_rate_per_s,
                config.caller_burst,
            )
            revoker = None
            if auth is not None:  # revoked tokens, from the site's etcd and other sites
                pusher = RevocationLink(self.transport, config.rpc_timeout_s)
                stack.push_async_callback(pusher.close)
                revoker = Revoker(
                    auth,
                    etcd,
                    self.registry,
                    config.site,
                    pusher,
                    gateway=config.gateway,
                    sync_s=max(1.0, 5 * config.digest_interval_s),
                )
                self.revoker = await stack.enter_async_context(revoker)
            app = make_app(
                self.registry,
                sessions,
                self,
                faults,
                auth,
                board.reachability.unreachable,
                revoker,
            )
            add_call_routes(
                app,
                board,
                desk,
                records,
                self.registry,
                hub,
                self.media,
                ivr.estimated_wait_s,
                admission.check,
            )
            add_media_routes(app, self.media, desk)
            add_phone_routes(app, self.sip.phones if self.sip is not None else None, desk, book)
            add_ivr_routes(app, ivr, desk, records, shipped_prompts_dir())
            add_page_routes(app)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, config.http_host, config.http_port)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.http_address = f"{host}:{port}"
            me = Member(config.node_id, self.gossip.address, self.http_address, config.gateway)
            membership = Membership(etcd, config.site, me, self._peers_changed)
            self._announce(up=True)
            await membership.register()
            self._sessions, self._membership = sessions, membership
            sessions.unfence()
            stack.push_async_callback(self._cancel_tasks)
            self._tasks.spawn(membership.watch(), "membership watch")
            self._tasks.spawn(sessions.watch(), "session watch")
            self._tasks.spawn(board.run(), "call routing")
            self._tasks.spawn(self.media.run(), "media statistics")
            self._tasks.spawn(admission.meter.run(), "cpu meter")
            self._tasks.spawn(desk.watch_owners(), "owner watchdog")
            self._tasks.spawn(board.homes.watch(), "home watchdog")
            if self.sip is not None and self.sip.phones is not None:
                self._tasks.spawn(book.follow(self.sip.phones), "phone book")
            if orphans:
                self._tasks.spawn(self._free_orphan_agents(link, orphans), "free orphans' agents")
            print(
                f"node {config.node_id} site {config.site} http {self.http_address} "
                f"grpc {self.gossip.address}"
                + (f" sip sip:{self.sip.address}" if self.sip is not None else ""),
                flush=True,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            await self._drain(board, desk)
            log.info("node %s leaving", config.node_id)
            await sessions.leave()
            self._announce(up=False)
            await asyncio.sleep(LEAVE_FLUSH_S)
            with contextlib.suppress(Exception):
                await membership.deregister()

    async def _drain(self, board: Switchboard, desk: AgentDesk) -> None:
        """Take no new calls; let the calls in progress here end, up to drain_timeout_s."""
        self.draining = True
        board.draining = desk.draining = True
        deadline = time.monotonic() + self.config.drain_timeout_s
        while board.calls or desk.busy():
            if time.monotonic() > deadline:
                log.warning(
                    "node %s: drain timed out with %d calls and %d agents on calls",
                    self.config.node_id,
                    len(board.calls),
                    desk.busy(),
                )
                return
            await asyncio.sleep(0.1)
        log.info("node %s drained", self.config.node_id)

    async def _free_orphan_agents(
        self, link: NodeLink, orphans: list[tuple[str, str, str]]
    ) -> None:
        """Tell the home nodes of agents offered a call this node closed as failed on start."""
        pending = [(call, agent, node) for call, agent, node in orphans if agent]
        for _ in range(20):  # the agents' nodes become known as gossip syncs
            still = []
            for call_id, agent_id, node in pending:
                try:
                    await link.desk(node).release(call_id, agent_id, ReleaseReason.ENDED)
                except ConnectionError:
                    still.append((call_id, agent_id, node))
            if not still:
                return
            pending = still
            await asyncio.sleep(0.5)
        log.warning(
            "node %s could not free the agents of %d failed calls",
            self.config.node_id,
            len(pending),
        )

    def _offer_owner(self, call_id: str, agent_id: str) -> str | None:
        """The owner node of the call an agent here is offered (peer checks of a Release)."""
        offer = self.desk.offers.get(agent_id, {}).get(call_id) if self.desk is not None else None
        return offer.call.owner_node if offer is not None else None

    def _agent_available(self, agent_id: str) -> None:
        if self.desk is not None:
            self.desk.freed(agent_id)

    def _announce(self, *, up: bool) -> None:
        """Tell every site, through the registry, where this node listens (or that it left)."""
        config = self.config
        self.registry.write_node(
            NodeInfo(
                config.node_id,
                config.site,
                config.trust,
                self.gossip.address,
                self.http_address,
                config.gateway,
                up,
            )
        )
        self.gossip.changed()

    async def _cancel_tasks(self) -> None:
        await self._tasks.close()


def _sip(
    config: NodeConfig,
    board: Switchboard,
    records: CallRecords,
    hub: EventHub,
    desk: AgentDesk,
    digits: Callable[[str, str], object],
    gate: Callable[[], None] = lambda: None,
) -> SipService:
    """The SIP trunk side: calls from the trunk arrive where `sip_numbers` routes the dialled
    number (else at `sip_entry`, or wait in `sip_queue`) with the trunk and the dialled number
    in their record; RFC 4733 digits go to `digits` (the
    IVR's, which notes them on the call); offers to agents with a phone are called out.
    `gate()` raises when the node takes no new media calls (admission control: 503)."""

    default = Route(entry=config.sip_entry) if config.sip_entry else Route(queue=config.sip_queue)
    try:
        plan = parse_numbers(config.sip_numbers, default)
    except ValueError as error:
        raise ConfigError(f"sip_numbers: {error}") from None

    async def admit(caller: str, dialled: str, trunk: str) -> Call:
        route = plan.route(dialled)  # UnknownNumber: 404 to the trunk
        gate()  # Overloaded: 503 to the trunk, which tries another node
        call = await board.arrive(route.queue or config.sip_queue, caller, entry=route.entry)
        records.set_origin(call.call_id, trunk, dialled)
        return call

    credentials = (
        digest.Credentials(config.sip_user, config.sip_password) if config.sip_user else None
    )
    settings = TrunkSettings(
        config.sip_host, parse_allowed(config.sip_trunks), credentials, config.sip_answer
    )
    ports = (config.rtp_port_min, config.rtp_port_max)
    outbound = None
    if config.sip_outbound:
        host, port = config.sip_outbound.rsplit(":", 1)
        outbound = Peer(host, int(port))
    return SipService(
        config.sip_host,
        config.sip_port,
        settings,
        ports,
        admit,
        board,
        on_digits=digits,
        outbound=outbound,
        events=hub,
        desk=desk,
    )


def _admission(config: NodeConfig, registry: Registry, plane: MediaPlane) -> Admission:
    """The gate for new media calls; it names the other up nodes, this site's first."""

    def others() -> list[str]:
        up = [n for n in registry.nodes() if n.up and n.node_id != config.node_id]
        return [n.http for n in sorted(up, key=lambda n: (n.site != config.site, n.node_id))]

    meter = CpuMeter(on_sample=metrics.CPU_SHARE.set)
    return Admission(
        config.node_id,
        Limits(config.max_cpu_share, config.max_media_calls),
        meter,
        lambda: plane.calls_carried,
        others,
        metrics.MEDIA_CALLS_REFUSED.inc,
    )


@contextlib.asynccontextmanager
async def _media(
    config: NodeConfig,
    node: Node,
    board: Switchboard,
    desk: AgentDesk,
    sessions: Sessions,
    records: CallRecords,
    queue_file: QueueFile,
) -> AsyncIterator[MediaPlane]:
    """The media plane, following the switchboard's calls and the desk's agents."""
    link = MediaLink(node.registry, config.rpc_timeout_s, node.transport)
    plane = MediaPlane(
        config.node_id,
        config.site,
        MediaSettings(config.media_host, config.grpc_host, config.media_mode),
        link,
        hangup=board.hangup_caller,
        has_offer=lambda agent, call: call in desk.offers.get(agent, {}),
        holds_agent=lambda agent: agent in sessions.held,
        recordings=Path(config.data_dir) / "recordings",
        records_queue=lambda queue: _records(queue_file, queue),
        recorded=records.set_recording,
        trunk_leg=lambda call_id: node.sip.leg(call_id) if node.sip is not None else None,
        phone_leg=lambda call_id, agent_id: _phone_leg(node, call_id, agent_id),
        call_live=lambda call_id: call_id in board.calls,
    )
    board.observers.append(plane.observe)
    board.party_observers.append(plane.parties_changed)
    desk.on_release.append(plane.released)
    try:
        yield plane
    finally:
        await plane.close()
        await link.close()


def _phone_leg(node: Node, call_id: str, agent_id: str) -> RtpLeg | None:
    phones = node.sip.phones if node.sip is not None else None
    return phones.leg(call_id, agent_id) if phones is not None else None


def _records(queue_file: QueueFile, queue: str) -> bool:
    config = queue_file.current().get(queue)
    return config is not None and config.record


def _queue_file(path: str) -> QueueFile:
    """The deployed queue file (queues and entry points), re-read on change, or the built-in
    sample queues."""
    return QueueFile(Path(path) if path else None)


def _tls(config: NodeConfig) -> Tls | None:
    """The node's TLS material, checked against its config: the certificate must name this
    node's site and trust (its CN may be the node or the whole site)."""
    if not config.tls_cert:
        return None
    try:
        tls = Tls.load(config.tls_ca, config.tls_cert, config.tls_key)
    except (OSError, CaError) as error:
        raise ConfigError(f"tls_ca/tls_cert/tls_key: {error}") from None
    named = tls.identity()
    if (named.site, named.trust) != (config.site, config.trust):
        raise ConfigError(
            f"tls_cert names site {named.site} trust {named.trust.name.lower()}, not this "
            f"node's site {config.site} trust {config.trust.name.lower()}"
        )
    return tls


def _etcd_tls(config: NodeConfig) -> EtcdCredentials | None:
    """The client certificate for the site's etcd (https endpoints), or None."""
    if not config.etcd_cert:
        return None
    try:
        paths = (config.etcd_ca, config.etcd_cert, config.etcd_key)
        ca, cert, key = (Path(path).read_bytes() for path in paths)
    except OSError as error:
        raise ConfigError(f"etcd_ca/etcd_cert/etcd_key: {error}") from None
    return etcd_credentials(ca, cert, key)


def run_node(config: NodeConfig) -> int:
    """Run one node in this process until SIGTERM or SIGINT; then leave cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Node(config).run(stop)

    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0
