"""The Media service's partner rule over a real TLS connection on loopback (node/media_rpc.py,
node/peerpolicy.py `may_relay`): a partner site's node opens and closes node-to-node media legs
only for calls its own nodes own and that the agent is offered at the home node. Fails when the
rule is removed (monkeypatching `may_relay` to allow everything)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from node.ca import init_ca, issue
from node.calls_rpc import PeerRules
from node.media_rpc import MediaServicer
from node.transport import Tls, Transport
from protos import calls_pb2 as cpb
from protos import calls_pb2_grpc as cpb_grpc
from registry.records import Trust
from tests.node.test_tls import HOUSE, OTHER_HOUSE, PARTNER, site_registry


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
    tls: Tls, offers: dict[tuple[str, str], str]
) -> AsyncIterator[tuple[str, FakePlane]]:
    """The Media service of an in-house node (site-a) whose agent ann is offered `offers`:
    (call, agent) -> the call's owner node."""
    plane, transport = FakePlane(), Transport(tls=tls)
    rules = PeerRules(
        transport, "site-a", frozenset(), site_registry(HOUSE), lambda c, a: offers.get((c, a))
    )
    server = transport.server()
    cpb_grpc.add_MediaServicer_to_server(MediaServicer(lambda: plane, rules), server)
    port = transport.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", plane
    finally:
        await server.stop(0)


def opening(call_id: str) -> cpb.MediaOpenRequest:
    return cpb.MediaOpenRequest(call_id=call_id, agent_id="ann", address="127.0.0.1:5000")


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
