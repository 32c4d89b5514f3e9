"""The Media service's partner rules over a real TLS connection on loopback (node/media_rpc.py,
node/peerpolicy.py `may_relay`, `may_send_media_to`): a partner site's node opens and closes
node-to-node media legs only for calls its own nodes own and that the agent is offered at the
home node, and only with a relay address of its own (the IP it connects from, or its node's
gossiped gRPC host). Each test fails when its rule is removed (monkeypatching the rule to allow
everything)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest

from node.ca import Identity, init_ca, issue
from node.calls_rpc import PeerRules
from node.localcluster import LocalCluster, SitePlan
from node.media_rpc import MediaServicer
from node.peerpolicy import may_send_media_to
from node.transport import Tls, Transport
from protos import calls_pb2 as cpb
from protos import calls_pb2_grpc as cpb_grpc
from registry.records import Trust
from registry.registry import Registry
from registry.sync import Delta
from tests.node.test_cluster import Client
from tests.node.test_media import QUEUES, talk
from tests.node.test_tls import HOUSE, OTHER_HOUSE, PARTNER, node_info, site_registry


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tls]:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(ca)
    material = {}
    for node, site, trust in (
        (HOUSE, "site-a", Trust.INHOUSE),
        (OTHER_HOUSE, "site-b", Trust.INHOUSE),
        (PARTNER, "partner-c", Trust.PARTNER),
    ):
        cert, key = issue(ca, node, site, trust)
        material[node] = Tls.load(ca / "ca.pem", cert, key)
    return material


@dataclass
class FakePlane:
    opened: list[tuple[str, str, str]] = field(default_factory=list)
    closed: list[tuple[str, str]] = field(default_factory=list)

    async def open_leg(self, call_id: str, agent_id: str, owner_address: str) -> str:
        self.opened.append((call_id, agent_id, owner_address))
        return "127.0.0.1:40000"

    async def close_leg(self, call_id: str, agent_id: str) -> None:
        self.closed.append((call_id, agent_id))


@contextlib.asynccontextmanager
async def media_server(
    tls: Tls, offers: dict[tuple[str, str], str], registry: Registry | None = None
) -> AsyncIterator[tuple[str, FakePlane]]:
    """The Media service of an in-house node (site-a) whose agent ann is offered `offers`:
    (call, agent) -> the call's owner node."""
    plane, transport = FakePlane(), Transport(tls=tls)
    view = registry if registry is not None else site_registry(HOUSE)
    rules = PeerRules(transport, "site-a", frozenset(), view, lambda c, a: offers.get((c, a)))
    server = transport.server()
    cpb_grpc.add_MediaServicer_to_server(MediaServicer(lambda: plane, rules), server)
    port = transport.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", plane
    finally:
        await server.stop(0)


def opening(call_id: str, address: str = "127.0.0.1:5000") -> cpb.MediaOpenRequest:
    return cpb.MediaOpenRequest(call_id=call_id, agent_id="ann", address=address)


async def test_a_partner_bridges_media_only_for_its_own_calls(pki: dict[str, Tls]) -> None:
    offers = {("c-house", "ann"): OTHER_HOUSE, ("c-partner", "ann"): PARTNER}
    async with (
        media_server(pki[HOUSE], offers) as (address, plane),
        Transport(tls=pki[PARTNER]).channel(address) as channel,
    ):
        stub = cpb_grpc.MediaStub(channel)
        for request in (
            stub.Open(opening("c-house")),  # another site's call: would tap an in-house agent
            stub.Open(opening("c-nowhere")),  # no offer here at all
            stub.Close(cpb.MediaCloseRequest(call_id="c-house", agent_id="ann")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await request
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may bridge media only" in str(refused.value.details())
        assert plane.opened == []
        assert plane.closed == []
        # no offer left (released already): a Close changes nothing and is not an error
        await stub.Close(cpb.MediaCloseRequest(call_id="c-gone", agent_id="ann"))
        assert plane.closed == []
        # its own call: allowed
        reply = await stub.Open(opening("c-partner"))
        assert reply.address == "127.0.0.1:40000"
        await stub.Close(cpb.MediaCloseRequest(call_id="c-partner", agent_id="ann"))
        assert plane.opened == [("c-partner", "ann", "127.0.0.1:5000")]
        assert plane.closed == [("c-partner", "ann")]
    # an in-house owner may open any leg the plane accepts
    async with (
        media_server(pki[HOUSE], offers) as (address, plane),
        Transport(tls=pki[OTHER_HOUSE]).channel(address) as channel,
    ):
        await cpb_grpc.MediaStub(channel).Open(opening("c-house"))
        assert [call for call, _, _ in plane.opened] == ["c-house"]


GOSSIPED = "127.0.0.7"
"""Where the registry says the partner's node listens (its connection comes from 127.0.0.1)."""


def registry_with_partner_at(host: str) -> Registry:
    registry = site_registry(HOUSE)
    info = node_info(Registry(PARTNER), "partner-c", Trust.PARTNER, f"{host}:7070")
    registry.apply_delta(Delta(PARTNER, 0, 0, nodes=(info,)))
    return registry


async def test_a_partner_has_media_sent_only_to_its_own_node(pki: dict[str, Tls]) -> None:
    offers = {("c-partner", "ann"): PARTNER, ("c-house", "ann"): OTHER_HOUSE}
    registry = registry_with_partner_at(GOSSIPED)
    async with (
        media_server(pki[HOUSE], offers, registry) as (address, plane),
        Transport(tls=pki[PARTNER]).channel(address) as channel,
    ):
        stub = cpb_grpc.MediaStub(channel)
        for elsewhere in ("127.0.0.3:5000", "10.20.30.40:5000", "[::1]:5000", "example.org:5000"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Open(opening("c-partner", elsewhere))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, elsewhere
            details = str(refused.value.details())
            assert "site partner-c may have media sent only to its own node" in details
            assert f"127.0.0.1, {GOSSIPED}" in details
            assert elsewhere in details
        assert plane.opened == [], "nothing was bridged toward another host"
        # its own addresses: where its connection comes from, and its node's gossiped host
        await stub.Open(opening("c-partner", "127.0.0.1:5000"))
        await stub.Open(opening("c-partner", f"{GOSSIPED}:6000"))
        assert [a for _, _, a in plane.opened] == ["127.0.0.1:5000", f"{GOSSIPED}:6000"]
    # an in-house owner is trusted with its relay address, as with everything else
    async with (
        media_server(pki[HOUSE], offers, registry) as (address, plane),
        Transport(tls=pki[OTHER_HOUSE]).channel(address) as channel,
    ):
        await cpb_grpc.MediaStub(channel).Open(opening("c-house", "127.0.0.3:5000"))
        assert plane.opened == [("c-house", "ann", "127.0.0.3:5000")]


async def test_tones_cross_between_a_partners_caller_and_an_in_house_agent(
    tmp_path: Path,
) -> None:
    """End to end over mutual TLS: the partner's node owns the call and opens the leg at the
    in-house agent's home node, naming its own media address (loopback here; the site's address
    in network namespaces; the pod IP in Kubernetes), which the home node accepts. Fails when
    `may_send_media_to` refuses every address (no tone crosses)."""
    sites = [SitePlan("site-a", "inhouse", 1), SitePlan("partner-c", "partner", 1)]
    async with (
        LocalCluster(sites, tmp_path, fast=True, queues_toml=QUEUES) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        caller, phone, _ = await talk(client, "partner-c-n1", "site-a-n1", "ann")
        await caller.close()
        await phone.close()


def test_addresses_compare_by_host_in_canonical_form() -> None:
    """Pure: IPv6 spellings, brackets and case; no peer identity (plain gRPC) checks nothing."""
    partner = Identity(PARTNER, "partner-c", Trust.PARTNER)
    registry = registry_with_partner_at("Node-P.example")
    assert may_send_media_to(partner, "[0:0::1]:5000", "::1", registry) is None
    assert may_send_media_to(partner, "node-p.EXAMPLE:5000", None, registry) is None
    assert may_send_media_to(partner, "[::2]:5000", "::1", registry) is not None
    assert may_send_media_to(None, "10.9.9.9:5000", None, registry) is None
    stranger = Identity("partner-c-n7", "partner-c", Trust.PARTNER)  # not in the registry
    assert "none known" in str(may_send_media_to(stranger, "127.0.0.1:5", None, registry))
