"""Mutual TLS between nodes and what a partner site's node may do, each over a real TLS connection
on loopback (node/transport.py, node/peerpolicy.py, the gossip and call-exchange servicers).

Each test would fail with its restriction removed: the handshake requirement, the admission of
pushed registry entries, the reservation scopes, the home-node check on reports and pulls, and the
pinning of in-house customer fields to in-house certificates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

from node.ca import init_ca, issue
from node.calls_rpc import CallsServicer, NodeLink, PeerRules
from node.exchange import AgentAction, CallInfo, ReleaseReason, Reservation, Verdict
from node.gossip import Gossip, GossipTimers
from node.peerpolicy import parse_scopes
from node.transport import GRPC_OPTIONS, Tls, Transport
from protos import calls_pb2 as cpb
from protos import calls_pb2_grpc as cpb_grpc
from protos import registry_pb2 as rpb
from protos import registry_pb2_grpc as rpb_grpc
from registry import codec
from registry.records import AgentRecord, AgentState, NodeInfo, Trust
from registry.registry import Registry
from registry.sync import Delta

FAST = GossipTimers(digest_interval_s=0.2, push_delay_s=0.002, rpc_timeout_s=1.0)
HOUSE, OTHER_HOUSE, PARTNER = "site-a-n1", "site-b-n1", "partner-c-n1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tls]:
    """Certificates from one CA for two in-house nodes and a partner's, and a rogue CA's."""
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = root / "ca", root / "rogue"
    init_ca(ca)
    init_ca(rogue, name="someone else's CA")
    material: dict[str, Tls] = {}
    for directory, node, site, trust in (
        (ca, HOUSE, "site-a", Trust.INHOUSE),
        (ca, OTHER_HOUSE, "site-b", Trust.INHOUSE),
        (ca, PARTNER, "partner-c", Trust.PARTNER),
        (rogue, "site-a-n9", "site-a", Trust.INHOUSE),
    ):
        cert, key = issue(directory, node, site, trust)
        material[node] = Tls.load(directory / "ca.pem", cert, key)
    return material


def agent(registry: Registry, name: str, site: str, trust: Trust) -> AgentRecord:
    return registry.write_agent(
        AgentRecord(name, registry.node_id, site, trust, 1, (("sales", 3),), AgentState.AVAILABLE)
    )


def node_info(registry: Registry, site: str, trust: Trust, grpc_address: str) -> NodeInfo:
    return registry.write_node(
        NodeInfo(registry.node_id, site, trust, grpc_address, "127.0.0.1:9", False)
    )


async def push(transport: Transport, address: str, delta: Delta) -> None:
    async with transport.channel(address) as channel:
        await rpb_grpc.GossipStub(channel).Push(codec.delta_to_wire(delta), timeout=2)


# -- no certificate, no connection ----------------------------------------------------------------


async def test_a_peer_without_a_valid_certificate_cannot_connect(pki: dict[str, Tls]) -> None:
    house = Transport(tls=pki[HOUSE])
    async with Gossip(Registry(HOUSE), "127.0.0.1", 0, FAST, transport=house) as server:
        request = rpb.FullStateRequest(requester="x")
        no_cert = grpc.ssl_channel_credentials(pki[HOUSE].ca)
        attempts = {
            "plain gRPC": grpc.aio.insecure_channel(server.address),
            "TLS without a client certificate": grpc.aio.secure_channel(
                server.address,
                no_cert,
                options=[*GRPC_OPTIONS, ("grpc.ssl_target_name_override", "node.callmesh")],
            ),
            "a certificate from another CA": Transport(tls=pki["site-a-n9"]).channel(
                server.address
            ),
        }
        for what, channel in attempts.items():
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in rpb_grpc.GossipStub(channel).FullState(request, timeout=2):
                        pass
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
        async with Transport(tls=pki[PARTNER]).channel(server.address) as channel:
            chunks = [c async for c in rpb_grpc.GossipStub(channel).FullState(request, timeout=2)]
        assert chunks, "a valid partner certificate connects"


# -- registry writes ------------------------------------------------------------------------------


async def test_a_partner_cannot_write_records_of_agents_homed_elsewhere(
    pki: dict[str, Tls],
) -> None:
    house_registry, partner_registry = Registry(HOUSE), Registry(PARTNER)
    other_registry = Registry(OTHER_HOUSE)
    node_info(house_registry, "site-a", Trust.INHOUSE, "127.0.0.1:1")
    ann = agent(house_registry, "ann", "site-a", Trust.INHOUSE)
    partner_node = node_info(partner_registry, "partner-c", Trust.PARTNER, "127.0.0.1:2")
    other_node = node_info(other_registry, "site-b", Trust.INHOUSE, "127.0.0.1:3")
    pat = agent(partner_registry, "pat", "partner-c", Trust.PARTNER)
    ben = agent(other_registry, "ben", "site-b", Trust.INHOUSE)
    clock = partner_registry.clock.now()
    forged_ann = replace(ann, state=AgentState.NOT_READY, reason="forged", epoch=9, clock=clock)
    squatted = replace(ben, agent_id="bea", home_node=PARTNER, site="partner-c", clock=clock)
    squatted = replace(squatted, trust=Trust.INHOUSE)  # a partner agent claiming in-house trust
    transport = Transport(tls=pki[HOUSE])
    async with Gossip(house_registry, "127.0.0.1", 0, FAST, transport=transport) as server:
        delta = Delta(
            PARTNER, 0, 0, agents=(forged_ann, pat, ben, squatted), nodes=(partner_node, other_node)
        )
        await push(Transport(tls=pki[PARTNER]), server.address, delta)
        assert house_registry.agent("ann") == ann, "an in-house agent's record was overwritten"
        assert house_registry.agent("ben") is None, "a partner relayed another site's agent"
        assert house_registry.agent("bea") is None, "a partner agent claimed in-house trust"
        assert house_registry.node(OTHER_HOUSE) is None, "a partner wrote another site's node"
        assert house_registry.agent("pat") == pat, "the partner's own agent is admitted"
        # an in-house gateway relays other sites' entries: admitted
        await push(
            Transport(tls=pki[OTHER_HOUSE]),
            server.address,
            Delta(OTHER_HOUSE, 0, 0, agents=(ben,), nodes=(other_node,)),
        )
        assert house_registry.agent("ben") == ben


async def test_an_in_house_node_reads_the_registry_only_from_in_house_peers(
    pki: dict[str, Tls],
) -> None:
    """Gossip channels of an in-house node are pinned to in-house certificates: a partner's
    replica (which may hold anything) never flows into it through a reconciliation."""
    partner_registry = Registry(PARTNER)
    node_info(partner_registry, "partner-c", Trust.PARTNER, "127.0.0.1:2")
    agent(partner_registry, "pat", "partner-c", Trust.PARTNER)
    house_registry = Registry(HOUSE)
    async with (
        Gossip(partner_registry, "127.0.0.1", 0, FAST, transport=Transport(tls=pki[PARTNER]))
        as partner,
        Gossip(house_registry, "127.0.0.1", 0, FAST, transport=Transport(tls=pki[HOUSE]))
        as house,
    ):  # fmt: skip
        house.set_peers([partner.address])
        await asyncio.sleep(1.0)
        assert not house.peers[partner.address].ever_synced
        assert house_registry.agent("pat") is None
        partner.set_peers([house.address])  # the partner dials in: its pushes are checked

        async def arrived() -> bool:
            return house_registry.agent("pat") is not None

        for _ in range(100):
            if await arrived():
                break
            await asyncio.sleep(0.05)
        assert await arrived()


# -- the call exchange ----------------------------------------------------------------------------


@dataclass
class FakeDesk:
    reserved: list[tuple[CallInfo, str]] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        self.reserved.append((call, agent_id))
        return Reservation(True, "", 1)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        self.released.append((call_id, agent_id))

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        self.asked.append((call_id, agent_id))
        return Verdict(True)


@dataclass
class FakeOwner:
    reports: list[str] = field(default_factory=list)
    pulls: list[str] = field(default_factory=list)

    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict:
        self.reports.append(agent_id)
        return Verdict(True)

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        self.pulls.append(agent_id)
        return True


@contextlib.asynccontextmanager
async def calls_server(
    tls: Tls,
    site: str,
    registry: Registry,
    scopes: tuple[str, ...] = (),
    offers: dict[tuple[str, str], str] | None = None,
) -> AsyncIterator[tuple[str, FakeDesk, FakeOwner]]:
    """A call-exchange server with fake desk and owner; `offers`: (call, agent) -> owner node."""
    desk, owner = FakeDesk(), FakeOwner()
    transport = Transport(tls=tls)
    known = dict(offers or {})
    rules = PeerRules(
        transport, site, parse_scopes(scopes), registry, lambda c, a: known.get((c, a))
    )
    server = transport.server()
    cpb_grpc.add_CallsServicer_to_server(CallsServicer(lambda: desk, lambda: owner, rules), server)
    port = transport.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", desk, owner
    finally:
        await server.stop(0)


def reserve_request(owner_node: str, agent_id: str) -> cpb.ReserveRequest:
    call = cpb.CallInfo(call_id="c-1", owner_node=owner_node, queue="sales", caller="+49")
    return cpb.ReserveRequest(call=call, agent_id=agent_id, ring_timeout_ms=1000)


def site_registry(node_id: str) -> Registry:
    """A registry that knows the three nodes of these tests and their sites (by gossip)."""
    registry = Registry(node_id)
    for name, site, trust in (
        (HOUSE, "site-a", Trust.INHOUSE),
        (OTHER_HOUSE, "site-b", Trust.INHOUSE),
        (PARTNER, "partner-c", Trust.PARTNER),
    ):
        info = node_info(Registry(name), site, trust, "127.0.0.1:2")
        registry.apply_delta(Delta(name, 0, 0, nodes=(info,)))
    return registry


async def test_a_partner_reserves_agents_only_within_its_scopes(pki: dict[str, Tls]) -> None:
    partner = Transport(tls=pki[PARTNER])
    scopes = ("partner-c=site-b",)
    async with (
        calls_server(pki[HOUSE], "site-a", site_registry(HOUSE)) as (site_a, desk_a, _),
        calls_server(pki[OTHER_HOUSE], "site-b", site_registry(OTHER_HOUSE), scopes)
        as (site_b, desk_b, _),
    ):  # fmt: skip
        async with partner.channel(site_a) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await cpb_grpc.CallsStub(channel).Reserve(reserve_request(PARTNER, "ann"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may not reserve agents of site site-a" in str(refused.value.details())
        assert desk_a.reserved == []
        async with partner.channel(site_b) as channel:
            stub = cpb_grpc.CallsStub(channel)
            reply = await stub.Reserve(reserve_request(PARTNER, "ben"))
            assert reply.reserved
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # for a call it does not own
                await stub.Reserve(reserve_request(HOUSE, "ben"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert [agent for _, agent in desk_b.reserved] == ["ben"]
        # an in-house owner reserves anywhere
        async with Transport(tls=pki[OTHER_HOUSE]).channel(site_a) as channel:
            assert (
                await cpb_grpc.CallsStub(channel).Reserve(reserve_request(OTHER_HOUSE, "ann"))
            ).reserved


async def test_a_partner_reports_and_pulls_only_for_agents_it_is_home_to(
    pki: dict[str, Tls],
) -> None:
    house_registry, partner_registry = site_registry(HOUSE), Registry(PARTNER)
    ann = agent(house_registry, "ann", "site-a", Trust.INHOUSE)
    pat = agent(partner_registry, "pat", "partner-c", Trust.PARTNER)
    house_registry.apply_delta(Delta(PARTNER, 0, 0, agents=(pat,)))
    assert house_registry.agent("ann") == ann
    async with (
        calls_server(pki[HOUSE], "site-a", house_registry) as (address, _, owner),
        Transport(tls=pki[PARTNER]).channel(address) as channel,
    ):
        stub = cpb_grpc.CallsStub(channel)
        for request in (
            stub.Report(
                cpb.AgentEvent(
                    call_id="c-1", agent_id="ann", action=cpb.AGENT_ACTION_ANSWER, epoch=1
                )
            ),
            stub.Pull(cpb.PullRequest(agent_id="ann", home_node=PARTNER, queue="sales")),
            stub.Pull(cpb.PullRequest(agent_id="pat", home_node=HOUSE, queue="sales")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await request
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert owner.reports == []
        assert owner.pulls == []
        await stub.Report(
            cpb.AgentEvent(call_id="c-1", agent_id="pat", action=cpb.AGENT_ACTION_ANSWER, epoch=1)
        )
        await stub.Pull(cpb.PullRequest(agent_id="pat", home_node=PARTNER, queue="sales"))
        assert owner.reports == ["pat"]
        assert owner.pulls == ["pat"]


async def test_in_house_customer_fields_go_only_to_in_house_certificates(
    pki: dict[str, Tls],
) -> None:
    """The owner's link sends an offer cut for in-house eyes over a channel pinned to in-house
    certificates: a partner node whose registry entries claim an in-house agent gets nothing."""
    partner_registry = Registry(PARTNER)
    async with calls_server(pki[PARTNER], "partner-c", partner_registry) as (address, desk, _):
        info = node_info(partner_registry, "partner-c", Trust.PARTNER, address)
        pat = agent(partner_registry, "pat", "partner-c", Trust.PARTNER)
        mallory = agent(partner_registry, "mallory", "partner-c", Trust.INHOUSE)  # a false claim
        owner_registry = Registry(HOUSE)
        owner_registry.apply_delta(Delta(PARTNER, 0, 0, agents=(pat, mallory), nodes=(info,)))
        link = NodeLink(owner_registry, 1.0, Transport(tls=pki[HOUSE]))
        full = {"name": "Ada", "date_of_birth": "1990-01-01"}  # cut for in-house eyes
        cut = {"name": "Ada"}
        try:
            with pytest.raises(ConnectionError):
                await link.desk(PARTNER).reserve(
                    CallInfo("c-1", HOUSE, "sales", "+49", 0, "", full), "mallory", 1.0, 1.0
                )
            assert desk.reserved == []
            answer = await link.desk(PARTNER).reserve(
                CallInfo("c-2", HOUSE, "sales", "+49", 0, "", cut), "pat", 1.0, 1.0
            )
            assert answer.reserved
            assert [(call.customer, agent) for call, agent in desk.reserved] == [(cut, "pat")]
        finally:
            await link.close()


def test_tls_material_must_name_the_node_it_runs(pki: dict[str, Tls], tmp_path: Path) -> None:
    from node.app import _tls
    from node.config import ConfigError, NodeConfig

    ca = tmp_path / "ca"
    init_ca(ca)
    cert, key = issue(ca, PARTNER, "partner-c", Trust.PARTNER)
    base = {"etcd_endpoints": ["http://127.0.0.1:1"], "tls_ca": str(ca / "ca.pem")}
    base |= {"tls_cert": str(cert), "tls_key": str(key)}
    config = NodeConfig.from_mapping(
        {**base, "node_id": PARTNER, "site": "partner-c", "trust": "partner"}
    )
    assert _tls(config) is not None
    with pytest.raises(ConfigError, match="tls_cert names site partner-c trust partner"):
        _tls(NodeConfig.from_mapping({**base, "node_id": PARTNER, "site": "site-a"}))


async def test_a_partner_releases_agents_only_from_its_own_calls(pki: dict[str, Tls]) -> None:
    offers = {("c-house", "ann"): HOUSE, ("c-partner", "ann"): PARTNER}
    async with (
        calls_server(pki[HOUSE], "site-a", site_registry(HOUSE), offers=offers) as (
            address,
            desk,
            _,
        ),
        Transport(tls=pki[PARTNER]).channel(address) as channel,
    ):
        stub = cpb_grpc.CallsStub(channel)
        ended = cpb.RELEASE_REASON_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Release(cpb.ReleaseRequest(call_id="c-house", agent_id="ann", reason=ended))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await stub.Release(cpb.ReleaseRequest(call_id="c-partner", agent_id="ann", reason=ended))
        assert desk.released == [("c-partner", "ann")]


async def test_a_partner_asks_whether_an_agent_holds_only_its_own_calls(
    pki: dict[str, Tls],
) -> None:
    offers = {("c-house", "ann"): HOUSE, ("c-partner", "ann"): PARTNER}
    async with (
        calls_server(pki[HOUSE], "site-a", site_registry(HOUSE), offers=offers) as (
            address,
            desk,
            _,
        ),
        Transport(tls=pki[PARTNER]).channel(address) as channel,
    ):
        stub = cpb_grpc.CallsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Holds(cpb.HoldsRequest(call_id="c-house", agent_id="ann", epoch=1))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.Holds(cpb.HoldsRequest(call_id="c-partner", agent_id="ann", epoch=1))
        assert reply.held
        assert desk.asked == [("c-partner", "ann")]
